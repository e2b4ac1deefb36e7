#!/usr/bin/env python3
"""A credit-risk model's whole lifecycle recorded in mlaudit with the Python SDK.

    python examples/credit-risk/run.py --self-contained          # starts its own mlaudit serve
    python examples/credit-risk/run.py --url http://127.0.0.1:8080 --token mla_... --reader-token mla_...

Stages: data (source accessed, transformation, snapshot with the real SHA-256), training
(a run with one evaluated checkpoint per cross-validation fold), registry (registration
with the pickled artifact's SHA-256, promotion request, approval by a named approver, stage
change), operations (deployment, traffic routing), predictions (through the decorator,
sampled per model). Then: flush, the lineage of one prediction, and its inclusion proof
checked by both verifiers (`mlaudit verify-bundle` and `python -m mlaudit.verify`).

The data is scikit-learn's bundled Wisconsin breast-cancer table (569 rows, 30 numeric
features, binary label), standing in for a tabular credit dataset: no download needed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
try:
    import mlaudit
except ImportError:  # not pip-installed: use the source in the repository
    sys.path.insert(0, os.path.join(REPO, "clients", "python"))
    import mlaudit

MODEL, VERSION = "credit-risk", "7"


def find_binary() -> str | None:
    env = os.environ.get("MLAUDIT_BIN")
    if env:
        return env
    for rel in ("target/release/mlaudit", "target/debug/mlaudit"):
        p = os.path.join(REPO, rel)
        if os.path.exists(p):
            return p
    return shutil.which("mlaudit")


def http_get(url: str, token: str | None = None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


class LocalServer:
    """`mlaudit init` + tokens + `mlaudit serve` on a free port in a temporary directory."""

    def __init__(self, binary: str) -> None:
        self.bin = binary
        self.dir = tempfile.mkdtemp(prefix="mlaudit-credit-risk-")
        self.data = os.path.join(self.dir, "data")
        self._cli("init", "--origin", "credit-risk.example/audit")
        self.writer = self._cli("token", "create", "--role", "writer", "--name", "scoring-api")
        self.reader = self._cli("token", "create", "--role", "reader", "--name", "model-risk")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(os.path.join(self.dir, "serve.log"), "ab")
        self.proc = subprocess.Popen([binary, "--data", self.data, "serve", "--listen",
                                      f"127.0.0.1:{port}"], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while True:
            try:
                http_get(self.url + "/healthz")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"mlaudit serve did not start; see {self.dir}/serve.log")
                time.sleep(0.05)

    def _cli(self, *args: str) -> str:
        p = subprocess.run([self.bin, "--data", self.data, *args], capture_output=True,
                           text=True, check=True)
        return p.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def lifecycle(logger: "mlaudit.AuditLogger", n_predictions: int) -> None:
    import numpy as np
    import sklearn
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seed = 20261127
    # -- data ----------------------------------------------------------------------------
    ds = load_breast_cancer()
    X, y = ds.data.astype(np.float64), ds.target.astype(np.int64)
    raw_sha = sha256(X.tobytes() + y.tobytes())
    logger.data.source_accessed(
        dataset="applications",
        source=f"sklearn://datasets/load_breast_cancer?version={sklearn.__version__}",
        attributes={"rows": int(X.shape[0]), "columns": int(X.shape[1]), "raw_sha256": raw_sha,
                    "note": "bundled stand-in for a tabular credit dataset"})
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=seed,
                                                        stratify=y)
    logger.data.transformation_applied(
        dataset="applications", inputs=["applications@raw"],
        transformation="stratified train/test split 75/25", filters={"random_state": seed})
    snapshot = X_train.tobytes() + y_train.tobytes()
    logger.data.snapshot_created(dataset="applications", dataset_version="v1",
                                 content_sha256=sha256(snapshot),
                                 attributes={"rows": int(X_train.shape[0])})
    print(f"data:        {X.shape[0]} rows; training snapshot applications@v1 "
          f"sha256 {sha256(snapshot)[:16]}…")

    # -- training ------------------------------------------------------------------------
    hp = {"C": 0.5, "penalty": "l2", "max_iter": 500, "folds": 5}
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    with logger.training_run(run=run_id, model=MODEL, hyperparameters=hp, random_seed=seed,
                             datasets=["applications@v1"]) as run:
        folds = StratifiedKFold(n_splits=hp["folds"], shuffle=True, random_state=seed)
        for step, (tr, va) in enumerate(folds.split(X_train, y_train), start=1):
            m = make_pipeline(StandardScaler(), LogisticRegression(C=hp["C"], max_iter=hp["max_iter"]))
            m.fit(X_train[tr], y_train[tr])
            p = m.predict_proba(X_train[va])[:, 1]
            run.checkpoint(step, {"fold_auc": round(float(roc_auc_score(y_train[va], p)), 4),
                                  "fold_accuracy": round(float(accuracy_score(y_train[va], p > 0.5)), 4)})
        model = make_pipeline(StandardScaler(), LogisticRegression(C=hp["C"], max_iter=hp["max_iter"]))
        model.fit(X_train, y_train)
        p = model.predict_proba(X_test)[:, 1]
        test_auc = float(roc_auc_score(y_test, p))
        run.checkpoint(hp["folds"] + 1, {"test_auc": round(test_auc, 4)}, final=True)
        run.add_compute(cpu_cores=os.cpu_count())
    print(f"training:    {run_id}: {hp['folds']} folds + final fit, test AUC {test_auc:.4f}")

    # -- registry ------------------------------------------------------------------------
    artifact = pickle.dumps(model)
    logger.registry.model_registered(model=MODEL, version=VERSION, run=run_id,
                                     artifact_sha256=sha256(artifact),
                                     attributes={"artifact_bytes": len(artifact),
                                                 "framework": f"scikit-learn {sklearn.__version__}"})
    logger.registry.promotion_requested(model=MODEL, version=VERSION, to_stage="production",
                                        actor={"id": "dev.lee", "type": "user"})
    logger.registry.approval_granted(model=MODEL, version=VERSION, approver="maria.gonzalez",
                                     reason=f"validation report MRM-2291 reviewed; test AUC {test_auc:.3f}")
    logger.registry.stage_changed(model=MODEL, version=VERSION, from_stage="staging",
                                  to_stage="production")
    print(f"registry:    {MODEL}@{VERSION} artifact sha256 {sha256(artifact)[:16]}…, "
          "approved by maria.gonzalez, staging → production")

    # -- operations ----------------------------------------------------------------------
    logger.operations.deployed(deployment="credit-risk-eu", model=MODEL, version=VERSION,
                               environment="production")
    logger.operations.traffic_routed(deployment="credit-risk-eu", split={VERSION: 100})
    print("operations:  deployed to credit-risk-eu, 100% of traffic on version 7")

    # -- predictions ---------------------------------------------------------------------
    # High-risk credit decisions: every prediction. A low-risk marketing model scored on
    # the same requests: 5% of them, chosen deterministically by request id.
    @logger.predictions(model=MODEL, version=VERSION, risk="high")
    def score(features, request_id):
        return {"default_probability": round(float(model.predict_proba(features.reshape(1, -1))[0, 1]), 6)}

    @logger.predictions(model="marketing-propensity", version="2", risk=("low", 0.05))
    def propensity(features, request_id):
        return {"propensity": round(float(np.tanh(features[:3].sum() / 100.0)), 6)}

    rng = np.random.default_rng(seed)
    for i in range(n_predictions):
        row = X_test[rng.integers(len(X_test))]
        score(row, request_id=f"loan-app-{i:05d}")
        propensity(row, request_id=f"loan-app-{i:05d}")
    st = logger.stats()
    print(f"predictions: {n_predictions} credit-risk (all logged), {n_predictions} "
          f"marketing-propensity ({n_predictions - st['sampled_out']} logged at 5%)")


def lineage_events(doc, section="prediction"):
    """Every event in a lineage answer, depth first, with the section it sits in."""
    if isinstance(doc, dict):
        if "kind" in doc and "seq" in doc:
            yield section, doc
            return
        for k, v in doc.items():
            yield from lineage_events(v, section if k in ("events", "event") else k)
    elif isinstance(doc, list):
        for v in doc:
            yield from lineage_events(v, section)


def describe(ev) -> str:
    subject = ",".join(f"{k}={v}" for k, v in ev.get("subject", {}).items())
    attrs = ev.get("attributes") or {}
    keys = ("source", "content_sha256", "status", "step", "metrics", "artifact_sha256", "approver",
            "reason", "to_stage", "environment", "split", "outputs")
    shown = {k: attrs[k] for k in keys if isinstance(attrs, dict) and k in attrs}
    text = f"{subject} {json.dumps(shown, separators=(',', ':'))}" if shown else subject
    return text if len(text) <= 110 else text[:107] + "..."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("MLAUDIT_URL"))
    ap.add_argument("--token", default=os.environ.get("MLAUDIT_TOKEN"), help="writer token")
    ap.add_argument("--reader-token", default=os.environ.get("MLAUDIT_READER_TOKEN"))
    ap.add_argument("--self-contained", action="store_true",
                    help="init a temporary data dir, create tokens, start mlaudit serve")
    ap.add_argument("--predictions", type=int, default=300)
    ap.add_argument("--spool-dir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--verbose", action="store_true", help="print the full lineage JSON")
    args = ap.parse_args()

    server = None
    binary = find_binary()
    if args.self_contained:
        if binary is None:
            print("no mlaudit binary: set MLAUDIT_BIN or build target/release/mlaudit",
                  file=sys.stderr)
            return 2
        server = LocalServer(binary)
        args.url, args.token, args.reader_token = server.url, server.writer, server.reader
        print(f"started mlaudit serve at {server.url} (data in {server.data})")
    elif not (args.url and args.token and args.reader_token):
        ap.error("give --url, --token and --reader-token (or MLAUDIT_URL, MLAUDIT_TOKEN, "
                 "MLAUDIT_READER_TOKEN), or --self-contained")
    work = tempfile.mkdtemp(prefix="credit-risk-example-")
    try:
        logger = mlaudit.AuditLogger(args.url, args.token,
                                     args.spool_dir or os.path.join(work, "spool"),
                                     actor={"id": "credit-risk-pipeline", "type": "service"})
        lifecycle(logger, args.predictions)
        delivered = logger.flush(60)
        st = logger.stats()
        logger.close()
        print(f"flush:       delivered={delivered} sent={st['sent']} spooled={st['spooled']} "
              f"rejected={st['rejected']} dropped={st['dropped']}")
        if not delivered or st["rejected"] or st["dropped"]:
            print("not every event was delivered", file=sys.stderr)
            return 1

        # -- lineage of one prediction -----------------------------------------------------
        page = http_get(f"{args.url}/v1/events?model={MODEL}&kind=prediction.served&limit=1",
                        args.reader_token)
        pred = page["events"][0]["event"]
        lineage = http_get(f"{args.url}/v1/lineage/{pred['id']}", args.reader_token)
        print(f"\nlineage of prediction {pred['id']} (request {pred['subject']['request']}):")
        if args.verbose:
            print(json.dumps(lineage, indent=1))
        else:
            for section, ev in sorted(lineage_events(lineage), key=lambda x: x[1]["seq"]):
                print(f"  seq {ev.get('seq'):>4}  {section:<12} {ev['kind']:<32} "
                      f"{describe(ev)}")

        # -- its proof, checked by both verifiers -----------------------------------------------
        bundle = http_get(f"{args.url}/v1/proof/inclusion/{pred['id']}", args.reader_token)
        key = http_get(f"{args.url}/v1/verifier-key").strip()
        path = os.path.join(work, "proof.json")
        with open(path, "w") as f:
            json.dump(bundle, f)
        print(f"\nproof bundle: leaf {bundle['leaf_index']} of {bundle['tree_size']}; "
              f"verifier key {key}")
        ok = True
        if binary:
            p = subprocess.run([binary, "verify-bundle", path, "--key", key],
                               capture_output=True, text=True)
            print(f"mlaudit verify-bundle:   exit {p.returncode}: {(p.stdout or p.stderr).strip()}")
            ok &= p.returncode == 0
        else:
            print("mlaudit verify-bundle:   skipped (no mlaudit binary found)")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(mlaudit.__file__)))
        p = subprocess.run([sys.executable, "-m", "mlaudit.verify", path, "--key", key],
                           capture_output=True, text=True, env=env)
        print(f"python -m mlaudit.verify: exit {p.returncode}: {(p.stdout or p.stderr).strip()}")
        ok &= p.returncode == 0
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()
            if not args.keep:
                shutil.rmtree(server.dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
