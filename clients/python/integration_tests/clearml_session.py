"""A real ClearML offline session (no server), run by test_clearml.py in a child process with
HOME, CLEARML_OFFLINE_MODE=1 and CLEARML_CONFIG_FILE set (a config holding only
`sdk.development.report_use_subprocess: false`: with ClearML's default reporter subprocess,
close() waits 10 s for it; the session files are the same):

    python clearml_session.py TASK_NAME WORKDIR

Prints one line `RESULT <json>` with the task id, the model id, the session folder and zip."""

import json
import os
import sys

from clearml import OutputModel, Task

name, workdir = sys.argv[1], sys.argv[2]
os.chdir(workdir)
Task.set_offline(True)
# No framework hooks, and no repository and package analysis (it takes seconds).
frameworks = {f: False for f in ("matplotlib", "tensorflow", "tensorboard", "pytorch",
                                 "xgboost", "scikit", "fastai", "lightgbm", "hydra", "joblib",
                                 "megengine", "catboost", "gradio", "jsonargparse")}
task = Task.init(project_name="credit", task_name=name, tags=["prod"],
                 auto_connect_frameworks=dict(frameworks, detect_repository=False),
                 auto_resource_monitoring=False)
task.set_comment("integration test session")
task.connect({"lr": 0.1, "depth": 5, "random_seed": 7})
log = task.get_logger()
for it in range(3):
    log.report_scalar("loss", "train", 1.0 / (it + 1), it)
    log.report_scalar("auc", "val", 0.7 + it * 0.05, it)
with open("model.pkl", "wb") as f:
    f.write(b"credit model weights v1")
model = OutputModel(task=task, name="credit-model", framework="scikit-learn")
try:
    model.update_weights("model.pkl")
    how = "update_weights"
except AttributeError:
    # clearml 2.1.12: update_weights fails offline ('DummyModel' object has no attribute
    # 'locked'); the private offline path is what it would have called.
    if not hasattr(model, "_update_weights_offline"):
        raise
    model._update_weights_offline(weights_filename="model.pkl", iteration=2)
    how = "_update_weights_offline"
task.upload_artifact("feature_list", artifact_object={"features": ["age", "income"]})
log.report_single_value("final_auc", 0.8)
folder = str(task.get_offline_mode_folder())
task_id, model_id = task.id, model.id
task.close()
print("RESULT " + json.dumps({"task_id": task_id, "model_id": model_id, "folder": folder,
                              "zip": folder.rstrip("/") + ".zip", "weights": how}), flush=True)
