"""Stage helpers: every event they build is accepted by the real server's catalogue
validation, and the lineage of a prediction links them up."""

import pytest

from conftest import make_logger


def test_full_lifecycle_and_lineage(shared_server, tmp_path):
    srv = shared_server
    lg = make_logger(srv, tmp_path / "spool")
    lg.data.source_accessed(dataset="loans", source="s3://bank-raw/loans/2026-11.parquet")
    lg.data.transformation_applied(dataset="loans", inputs=["loans@raw"],
                                   transformation="drop PII; impute income",
                                   filters={"country": "ES"})
    lg.data.snapshot_created(dataset="loans", dataset_version="v3", content_sha256="ab" * 32)
    with lg.training_run(run="run-st-1", model="lc-model", hyperparameters={"C": 1.0},
                         random_seed=7, datasets=["loans@v3"], compute={"gpus": 0}) as run:
        run.checkpoint(1, {"auc": 0.81})
        run.checkpoint(2, {"auc": 0.84, "loss": float("nan")})
        run.add_compute(node="trainer-1")
    lg.registry.model_registered(model="lc-model", version="4", run="run-st-1",
                                 artifact_sha256="cd" * 32)
    lg.registry.promotion_requested(model="lc-model", version="4", to_stage="production")
    lg.registry.approval_rejected(model="lc-model", version="4", approver="j.smith",
                                  reason="missing fairness report")
    lg.registry.approval_granted(model="lc-model", version="4", approver="maria.gonzalez",
                                 reason="validation report MRM-2291 reviewed")
    lg.registry.stage_changed(model="lc-model", version="4", from_stage="staging",
                              to_stage="production")
    lg.registry.deployment_target_assigned(model="lc-model", version="4", target="eu-west")
    lg.operations.deployed(deployment="lc-prod", model="lc-model", version="4",
                           environment="production")
    lg.operations.traffic_routed(deployment="lc-prod", split={"3": 90, "4": 10})
    lg.operations.config_changed(deployment="lc-prod",
                                 changes={"threshold": {"old": 0.5, "new": 0.55}})
    lg.operations.rolled_back(deployment="lc-prod", from_version="4", to_version="3",
                              trigger="latency SLO breach")
    lg.governance.policy_changed(policy="retention", old="90d", new="180d")

    @lg.predictions(model="lc-model", version="4")
    def predict(income, request_id):
        return {"default_probability": 0.07}

    predict(52000, request_id="lc-req-1")
    assert lg.flush(30) is True
    st = lg.stats()
    lg.close()
    assert st["rejected"] == 0 and st["sent"] == 19, st

    run_events = srv.query(run="run-st-1")
    kinds = [e["event"]["kind"] for e in run_events]
    assert kinds[:4] == ["training.run_started", "training.checkpoint_evaluated",
                         "training.checkpoint_evaluated", "training.run_completed"]
    done = run_events[3]["event"]["attributes"]
    assert done["status"] == "succeeded" and done["duration_s"] >= 0
    assert done["compute"]["gpus"] == 0 and done["compute"]["node"] == "trainer-1"
    assert "cpu_s" in done["compute"]
    assert run_events[2]["event"]["attributes"]["metrics"]["loss"] == "NaN"

    approval = srv.query(kind="registry.approval_granted", model="lc-model")[0]["event"]
    assert approval["actor"] == {"id": "maria.gonzalez", "type": "user"}

    pred = srv.query(model="lc-model", kind="prediction.served")[0]["event"]
    lineage = srv.get(f"/v1/lineage/{pred['id']}")
    text = str(lineage)
    for needle in ("run-st-1", "registry.approval_granted", "maria.gonzalez",
                   "operations.deployed", "loans"):
        assert needle in text, needle


def test_training_run_failure_is_recorded_and_reraised(shared_server, tmp_path):
    lg = make_logger(shared_server, tmp_path / "spool")
    err = RuntimeError("diverged")
    with pytest.raises(RuntimeError) as info:
        with lg.training_run(run="run-st-fail", model="lc-model", hyperparameters={},
                             random_seed=1, datasets=[]):
            raise err
    assert info.value is err
    assert lg.flush(30)
    lg.close()
    done = shared_server.query(run="run-st-fail", kind="training.run_completed")[0]["event"]
    assert done["attributes"]["status"] == "failed"
    assert "diverged" in done["attributes"]["error"]


def test_helpers_require_the_catalogues_fields(offline_server, tmp_path):
    lg = make_logger(offline_server, tmp_path / "spool")
    with pytest.raises(TypeError):
        lg.registry.approval_granted(model="m", version="1", reason="no approver")
    with pytest.raises(TypeError):
        lg.data.snapshot_created(dataset="d", dataset_version="1")
    with pytest.raises(TypeError):
        lg.training_run(run="r", model="m", hyperparameters={}, datasets=[])
    with pytest.raises(ValueError, match="sums to 90"):
        lg.operations.traffic_routed(deployment="d", split={"1": 50, "2": 40})
    lg.close(timeout=5)
