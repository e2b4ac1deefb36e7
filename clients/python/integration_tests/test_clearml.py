"""ClearML: a real offline session (clearml_session.py: `Task.set_offline(True)`, parameters,
scalars at several iterations, a single value, an output model, an artifact) run in a child
process with no ClearML server, then `mlaudit import clearml-offline` on its zip and on its
folder."""

import hashlib
import json
import os
import subprocess
import sys
import uuid

import pytest

from .harness import HERE, ConfiguredServer, by_kind, mlaudit_import, need

need("clearml")

SUMMARY_ITER = -2147483648


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    d = tmp_path_factory.mktemp("clearml")
    (d / "home").mkdir()
    (d / "work").mkdir()
    config = d / "clearml.conf"
    config.write_text("sdk { development { report_use_subprocess: false } }\n")
    name = f"train-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    env.update(HOME=str(d / "home"), CLEARML_OFFLINE_MODE="1",
               CLEARML_CONFIG_FILE=str(config))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "clearml_session.py"), name,
                           str(d / "work")], capture_output=True, text=True, timeout=120,
                          env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"the ClearML session failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
        f"{proc.stderr[-5000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["name"] = name
    assert os.path.isfile(result["zip"]) and os.path.isdir(result["folder"]), result
    return result


@pytest.fixture(scope="module")
def imported(session, tmp_path_factory):
    """The zip imported into a fresh log, then the folder into the same log."""
    d = tmp_path_factory.mktemp("clearml-log")
    server = ConfiguredServer(str(d / "data"))
    first = mlaudit_import(server.data, "clearml-offline", session["zip"])
    again = mlaudit_import(server.data, "clearml-offline", session["zip"])
    folder = mlaudit_import(server.data, "clearml-offline", session["folder"])
    server.start()
    events = by_kind(server.events(run=session["task_id"]))
    yield server, first, again, folder, events
    server.stop()


def test_task_is_run_started(session, imported):
    _, _, _, _, events = imported
    [started] = events["training.run_started"]
    assert started["subject"] == {"run": session["task_id"], "model": "credit-model"}
    a = started["attributes"]
    assert a["hyperparameters"] == {"lr": "0.1", "depth": "5", "random_seed": "7"}
    assert a["random_seed"] == 7
    assert a["project"] == "credit" and a["task_name"] == session["name"]
    assert a["human_actor"] == "unknown"
    assert a["unreported"] == ["datasets"]
    assert a["clearml_task"]["tags"] == ["prod"]
    assert a["clearml_task"]["comment"] == "integration test session"
    assert started["actor"] == {"id": "clearml", "type": "service"}


def test_scalars_are_checkpoints(session, imported):
    _, _, _, _, events = imported
    steps = {e["attributes"]["step"]: e for e in events["training.checkpoint_evaluated"]}
    assert sorted(steps) == [SUMMARY_ITER, 0, 1, 2]
    for it in range(3):
        assert steps[it]["attributes"]["metrics"] == pytest.approx(
            {"loss/train": 1.0 / (it + 1), "auc/val": 0.7 + it * 0.05})
        assert steps[it]["attributes"]["summary"] is False
    assert steps[SUMMARY_ITER]["attributes"]["metrics"] == {"Summary/final_auc": 0.8}
    assert steps[SUMMARY_ITER]["attributes"]["summary"] is True


def test_output_model_is_registered(session, imported):
    _, _, _, _, events = imported
    [reg] = events["registry.model_registered"]
    assert reg["subject"] == {"model": "credit-model", "version": session["model_id"],
                              "run": session["task_id"]}
    assert reg["attributes"]["artifact_sha256"] == hashlib.sha256(
        b"credit model weights v1").hexdigest()
    assert reg["attributes"]["weights_file"] == "model.pkl"
    assert reg["attributes"]["clearml_model"]["init"]["framework"] == "scikit-learn"


def test_offline_session_has_no_end(imported):
    _, _, _, _, events = imported
    assert "training.run_completed" not in events


def test_reimport_of_zip_and_folder_writes_nothing(imported):
    _, first, again, folder, events = imported
    total = sum(len(v) for v in events.values())
    assert first.new == total == 6  # run_started, 4 checkpoints, model_registered
    assert first.present == 0
    assert (again.new, again.present) == (0, total)
    # The folder is the same session as its zip: the same events, all already present.
    assert (folder.new, folder.present) == (0, total)


def test_lineage_from_the_model_to_its_run(session, imported):
    server, _, _, _, events = imported
    [reg] = events["registry.model_registered"]
    lin = server.lineage(reg["id"])
    assert lin["run"] == session["task_id"]
    assert lin["model"] == "credit-model" and lin["version"] == session["model_id"]
    assert sorted(e["kind"] for e in lin["training"]) == [
        "training.checkpoint_evaluated"] * 4 + ["training.run_started"]


def test_folder_alone(session, tmp_path):
    server = ConfiguredServer(str(tmp_path / "data"))
    r = mlaudit_import(server.data, "clearml-offline", session["folder"])
    assert (r.new, r.present) == (6, 0)
