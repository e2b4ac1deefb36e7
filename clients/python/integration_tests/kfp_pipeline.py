"""A two-component KFP v2 pipeline whose components record themselves with
mlaudit.integrations.kfp; run locally (kfp.local.SubprocessRunner, no cluster) by
test_kfp.py in a child process:

    python kfp_pipeline.py --url URL --token TOKEN --root PIPELINE_ROOT

Prints one line `RESULT <json>` with the pipeline run id and the artifacts' URIs."""

import argparse

from kfp import dsl, local
from kfp.dsl import Dataset, Input, Model, Output

IMAGE = "python:3.11"


@dsl.component(base_image=IMAGE)
def prepare_data(rows: int, features: Output[Dataset], audit_url: str, audit_token: str,
                 run_id: str) -> str:
    import json
    from mlaudit.integrations.kfp import record_component
    with open(features.path, "w") as f:
        f.write("age,income\n")
        for i in range(rows):
            f.write(f"{20 + i},{1000 * (i + 1)}\n")
    features.metadata["dataset"] = "credit/features"
    features.metadata["rows"] = rows
    receipts = record_component(audit_url, audit_token, pipeline_run=run_id,
                                component="prepare-data", outputs={"features": features})
    return json.dumps(receipts)


@dsl.component(base_image=IMAGE)
def train_model(data: Input[Dataset], model: Output[Model], scores: Output[Dataset], lr: float,
                audit_url: str, audit_token: str, run_id: str) -> str:
    import json
    import os
    from mlaudit.integrations.kfp import record_component
    rows = open(data.path).read().splitlines()[1:]
    os.makedirs(model.path, exist_ok=True)
    with open(os.path.join(model.path, "weights.json"), "w") as f:
        f.write(json.dumps({"lr": lr, "n": len(rows)}))
    os.makedirs(os.path.join(model.path, "meta"), exist_ok=True)
    with open(os.path.join(model.path, "meta", "MLmodel"), "w") as f:
        f.write("flavor: dummy\n")
    with open(scores.path, "w") as f:
        f.write("\n".join(f"{i},0.5" for i in range(len(rows))))
    scores.metadata["dataset"] = "credit/scores"
    record_component(audit_url, audit_token, pipeline_run=run_id, component="train-model",
                     inputs={"data": data}, outputs={"model": model, "scores": scores},
                     model="credit-risk-kfp", version="1",
                     actor={"id": "ml-platform@bank.example", "type": "user"},
                     hyperparameters={"lr": lr}, random_seed=7)
    return json.dumps({"run_id": run_id, "data_uri": data.uri, "data_meta": data.metadata,
                       "model_uri": model.uri, "scores_uri": scores.uri})


@dsl.pipeline(name="credit-pipeline")
def credit_pipeline(audit_url: str, audit_token: str, rows: int = 5, lr: float = 0.1) -> str:
    prep = prepare_data(rows=rows, audit_url=audit_url, audit_token=audit_token,
                        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    train = train_model(data=prep.outputs["features"], lr=lr, audit_url=audit_url,
                        audit_token=audit_token, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    return train.outputs["Output"]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--root", required=True)
    a = p.parse_args()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=a.root)
    task = credit_pipeline(audit_url=a.url, audit_token=a.token, rows=5, lr=0.2)
    print("RESULT " + task.output, flush=True)
