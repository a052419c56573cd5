"""Credentials never shown: a tracking URI with user:token@ and AWS keys in the environment stay out of
the panel's HTML, a job's log tail and record, the tracked run and the CLI — with everything real: a
local MLflow server reached through `http://alice:TOKEN@127.0.0.1:PORT`, job processes that print
the secrets (as a chatty library would), the Explorer panel rendered to HTML with its widget state.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from conftest import free_port
from prune_explorer import cli
from prune_explorer.jobs import COMPLETED, FAILED, JobQueue
from prune_explorer.masking import MASK, mask, mask_values

KEY_ID = "AKIA" + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
SECRET = secrets.token_urlsafe(30)
TOKEN = "tok-" + secrets.token_hex(12)
SERVER_START_S = 120


def test_mask_hides_user_info_secret_parameters_key_ids_and_secret_environment_values():
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_TRACKING_PASSWORD": "hunter2-long", "HOME": "/root",
           "AWS_REGION": "us-east-1", "SHORT_TOKEN": "true"}
    assert mask("https://alice:s3cr3t@mlflow.example.com/x?y=1", env) == "https://***@mlflow.example.com/x?y=1"
    assert mask(f"s3://{KEY_ID}:{SECRET}@bucket/key", env) == "s3://***@bucket/key"
    assert mask("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAX%2F1&X-Amz-Signature=ab12&v=2", env) == \
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&v=2"
    assert mask(f"key {KEY_ID} secret {SECRET} pw hunter2-long", env) == "key *** secret *** pw ***"
    plain = "s3://bucket/iterations/iter-001/trial /root/ws/model.json us-east-1 true icon@2x.png"
    assert mask(plain, env) == plain  # places and ordinary words stay
    assert mask_values({"a": [f"http://u:{TOKEN}@h"], "n": 3}, env) == {"a": ["http://***@h"], "n": 3}


# --- a real MLflow server behind a credentialed URI --------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    from prune_explorer.tracking.mlflow_tracker import _schema_template

    root = tmp_path_factory.mktemp("mlflow-server")
    store = root / "store.db"
    template = _schema_template()  # an empty store with the current schema: no migrations at start
    if template is not None:
        shutil.copyfile(template, store)
    port = free_port()
    log = root / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
             "--default-artifact-root", (root / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no MLflow server after {SERVER_START_S} s:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:  # refused, reset or timed out: not serving yet
                time.sleep(0.3)  # polling the server until it listens
        yield {"plain": f"http://127.0.0.1:{port}", "secret": f"http://alice:{TOKEN}@127.0.0.1:{port}"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


CHATTY_SCRIPT = '''
import json, os, sys
from pathlib import Path

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
out = Path(args["--out-dir"])
# what a chatty library prints: its configuration, credentials and all
print("tracking to", os.environ["MLFLOW_TRACKING_URI"], "as", os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
print("epoch 1/1 val_accuracy=0.5 (0.1s)", flush=True)
if args.get("--fail") == "true":
    sys.exit("could not reach " + os.environ["MLFLOW_TRACKING_URI"] + " with " + os.environ["AWS_SECRET_ACCESS_KEY"])
trial = "s3://" + os.environ["AWS_ACCESS_KEY_ID"] + ":" + os.environ["AWS_SECRET_ACCESS_KEY"] + "@bucket/trial"
(out / "metrics.json").write_text(json.dumps({"status": "completed", "best_accuracy": 0.5, "params": 10, "macs": 10,
                                               "epochs": [{"epoch": 1, "val_accuracy": 0.5}], "trial": trial}))
'''


def secrets_in(text: str) -> list[str]:
    return [s for s in (TOKEN, KEY_ID, SECRET) if s in text]


def test_a_tracking_uri_and_aws_keys_never_reach_the_panel_a_log_tail_or_a_tracked_run(mlflow_server, tmp_path,
                                                                                         monkeypatch, capsys):
    from ipywidgets.embed import embed_minimal_html
    from torchvision.models import resnet18

    from prune_explorer.model.zoo import tag_base
    from prune_explorer.tracking import MlflowTracker
    from prune_explorer.widgets.explorer import Explorer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server["secret"])  # how jobs are told where to track
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "chatty.py").write_text(CHATTY_SCRIPT)
    workspace = tmp_path / "ws"
    tracker = MlflowTracker(workspace, tracking_uri=mlflow_server["secret"], experiment="masking")
    queue = JobQueue(workspace, tracker=tracker)
    done = queue.wait(queue.submit("resnet18", iteration="baseline", entry_point="chatty.py",
                                   source_dir=scripts).id, timeout=120)
    failed = queue.wait(queue.submit("resnet18", iteration="iter-001", parent="baseline", entry_point="chatty.py",
                                     source_dir=scripts, hyperparameters={"fail": True}).id, timeout=120)
    queue.close()
    assert done.status == COMPLETED and failed.status == FAILED, (done.message, failed.message)

    # the job really printed them: the raw log has them, every view of it does not
    raw = (Path(failed.out_dir) / "train.log").read_text()
    assert set(secrets_in(raw)) == {TOKEN, KEY_ID, SECRET}
    for shown in (done.log_tail(50), failed.log_tail(50), failed.message,
                  (workspace / "jobs" / f"{failed.id}.json").read_text()):
        assert not secrets_in(shown), shown
    assert f"http://{MASK}@127.0.0.1" in failed.log_tail(50) and "could not reach" in failed.message

    # the tracked runs, read back from the server without credentials
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server["plain"])
    runs = client.search_runs([client.get_experiment_by_name("masking").experiment_id])
    assert {r.data.tags["prune_explorer.iteration"] for r in runs} == {"baseline", "iter-001"}
    for run in runs:
        recorded = json.dumps({"params": run.data.params, "tags": run.data.tags})
        assert not secrets_in(recorded), recorded
    baseline = next(r for r in runs if r.data.tags["prune_explorer.iteration"] == "baseline")
    assert baseline.data.params["trial_dir"] == f"s3://{MASK}@bucket/trial"  # recorded, masked

    # the panel on that workspace and tracker, rendered as HTML with every widget's state
    model = tag_base(resnet18(num_classes=10).eval(), "resnet18", {"num_classes": 10})
    explorer = Explorer(model, example_inputs=torch.zeros(1, 3, 16, 16), workspace=workspace, tracker=tracker,
                        criterion="l1", onnxruntime_latency=False).wait()
    try:
        explorer.refresh()
        explorer.error = f"could not reach {mlflow_server['secret']} as {KEY_ID}"  # any message it shows
        page = tmp_path / "panel.html"
        embed_minimal_html(page, views=[explorer], title="panel")
        html = page.read_text()
        traits = json.dumps({k: str(v) for k, v in explorer.trait_values().items()})
    finally:
        explorer.close()
    assert "recorded as MLflow run" in html and f"http://{MASK}@127.0.0.1" in html  # the URI is shown, masked
    assert "could not reach" in html and failed.id in html
    assert not secrets_in(html) and not secrets_in(traits)

    # the CLI: the history table, and an error quoting an unreachable credentialed URI
    assert cli.main(["history", "--workspace", str(workspace), "--tracking-uri", mlflow_server["secret"],
                     "--experiment", "masking"]) == 0
    shown = capsys.readouterr()
    assert "baseline" in shown.out and "iter-001" in shown.out
    assert not secrets_in(shown.out + shown.err)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    closed = f"http://alice:{TOKEN}@127.0.0.1:{free_port()}"
    assert cli.main(["history", "--workspace", str(workspace), "--tracking-uri", closed]) == 1
    shown = capsys.readouterr()
    assert f"http://{MASK}@127.0.0.1" in shown.err and not secrets_in(shown.out + shown.err), shown.err[-2000:]
