"""Hostile model.json files: loading never imports or calls the code a file names unless the user trusts it.

Each hostile spec would leave a marker file if anything it names ran: a command (`subprocess:run`,
`os:system`), code (`builtins:eval`), a class that is not an nn.Module (its constructor writes the
marker), and a module written by the test whose *import* writes a marker. Every path that reads a
model directory is tried — `load`, `prune-explorer export`, `prune-explorer rank`,
`Explorer.from_iteration`, a local fine-tuning job — and each refusal names the field. The same
module, trusted, does run (the markers are real), so the tests could fail.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from prune_explorer import cli
from prune_explorer.jobs import COMPLETED, FAILED, Job, JobQueue
from prune_explorer.jobs.base import new_id
from prune_explorer.model import store
from prune_explorer.model.trust import UntrustedCode, unregister_model
from prune_explorer.model.zoo import build_from_spec, build_model
from prune_explorer.workspace import Workspace
from sagemaker_fakes import aws, backend  # noqa: F401  (the moto server fixture)

QUICK = dict(dataset="digits", epochs=1, subset=60, val_subset=40, batch_size=30, capture="none",
             measure_latency=False, seed=0, image_size=8)


class Tiny(nn.Module):
    """What the hostile directories were saved from (and what the test module's `Net` rebuilds)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


HOSTILE_MODULE = '''
import pathlib
import torch
from torch import nn

pathlib.Path({imported!r}).touch()   # importing this module is already running code


class Net(nn.Module):                 # a real model class: only its import is hostile
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class Payload:                        # not an nn.Module: constructing it runs code
    def __init__(self, **kwargs):
        pathlib.Path({called!r}).touch()
'''


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """A module on sys.path (and on PYTHONPATH, for job processes) whose import writes a marker."""
    name = f"pe_hostile_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "site"
    folder.mkdir()
    markers = {"imported": tmp_path / "IMPORTED", "called": tmp_path / "CALLED", "ran": tmp_path / "RAN"}
    (folder / f"{name}.py").write_text(HOSTILE_MODULE.format(imported=str(markers["imported"]),
                                                             called=str(markers["called"])))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    yield {"module": name, **markers}
    sys.modules.pop(name, None)


def hostile_specs(h: dict) -> dict[str, dict]:
    """{case: model.json `base`} — each would write h["ran"] (or an import/call marker) if it ran."""
    ran = str(h["ran"])
    return {
        "subprocess:run": {"arch": "subprocess:run", "kwargs": {"args": ["touch", ran]}},
        "os:system": {"arch": "os:system", "kwargs": {"command": f"touch {ran}"}},
        "builtins:eval": {"arch": "builtins:eval", "kwargs": {"source": f"open({ran!r}, 'w')"}},
        "not a Module": {"arch": f"{h['module']}:Payload", "kwargs": {}},
        "import side effect": {"arch": f"{h['module']}:Net", "kwargs": {}},
    }


def nothing_ran(h: dict) -> bool:
    return not any(h[k].exists() for k in ("imported", "called", "ran")) and h["module"] not in sys.modules


def hostile_dir(root: Path, base: dict) -> Path:
    """A real saved model directory whose model.json was then edited to name `base`."""
    directory = store.save(build_model(f"{__name__}:Tiny"), root)
    spec_path = directory / "model.json"
    spec = json.loads(spec_path.read_text())
    spec["base"] = base
    spec_path.write_text(json.dumps(spec))
    return directory


CASES = ["subprocess:run", "os:system", "builtins:eval", "not a Module", "import side effect"]


def refused(message: str, directory: Path) -> bool:
    """The refusal names the file and the field, and says how to allow it."""
    return (f"{directory / 'model.json'}: field 'base.arch'" in message
            and ("--trust-model-code" in message or "nothing was called" in message))


@pytest.mark.parametrize("case", CASES)
def test_load_refuses_every_hostile_model_json_and_runs_nothing(hostile, tmp_path, case):
    directory = hostile_dir(tmp_path / "m", hostile_specs(hostile)[case])
    with pytest.raises(UntrustedCode) as caught:
        store.load(directory)
    assert refused(str(caught.value), directory), caught.value
    assert nothing_ran(hostile)


@pytest.mark.parametrize("case", ["subprocess:run", "os:system", "builtins:eval"])
def test_trusting_a_module_never_calls_what_is_not_a_module_class(hostile, tmp_path, case):
    base = hostile_specs(hostile)[case]
    directory = hostile_dir(tmp_path / "m", base)
    with pytest.raises(UntrustedCode, match=r"field 'base.arch' names .* not a torch.nn.Module subclass.*nothing was "
                                            r"called"):
        store.load(directory, trust_code=[base["arch"].partition(":")[0]])
    assert nothing_ran(hostile)


def test_a_trusted_module_is_imported_but_a_class_that_is_not_a_module_is_never_constructed(hostile, tmp_path):
    directory = hostile_dir(tmp_path / "m", hostile_specs(hostile)["not a Module"])
    with pytest.raises(UntrustedCode, match="is the class .*Payload, not a torch.nn.Module subclass; nothing was called"):
        store.load(directory, trust_code=hostile["module"])
    assert hostile["imported"].exists() and not hostile["called"].exists()  # trusted: imported; never constructed


def test_the_same_directory_loads_when_its_module_is_trusted_or_its_class_registered(hostile, tmp_path):
    """The markers are real: with trust the module runs; the refusal above is what kept it out."""
    directory = hostile_dir(tmp_path / "m", hostile_specs(hostile)["import side effect"])
    model = store.load(directory, trust_code=[hostile["module"]])
    assert hostile["imported"].exists() and type(model).__name__ == "Net"
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 10)

    saved = store.save(build_model(f"{__name__}:Tiny"), tmp_path / "tiny")
    with pytest.raises(UntrustedCode, match=f"prune_explorer.register_model\\(Tiny\\)"):
        store.load(saved)
    import prune_explorer

    name = prune_explorer.register_model(Tiny)  # as the message says (it once named a function not there)
    try:
        assert name == f"{__name__}:Tiny" and isinstance(store.load(saved), Tiny)  # the registry: no trust_code
    finally:
        unregister_model(name)


def test_a_trusted_name_covers_the_modules_under_it_only(hostile):
    spec = {"arch": "collections.abc:Sized", "kwargs": {}}
    with pytest.raises(UntrustedCode, match="--trust-model-code collections.abc"):
        build_from_spec(spec, trust_code=["collection"], where="spec")
    with pytest.raises(UntrustedCode, match="not a torch.nn.Module subclass"):  # "collections" covers collections.abc
        build_from_spec(spec, trust_code="collections", where="spec")
    with pytest.raises(ValueError, match="not a module name"):
        build_from_spec(spec, trust_code=["collections; rm -rf"], where="spec")


def test_torchvision_architectures_and_the_pretrained_demo_need_no_trust(tmp_path):
    from prune_explorer.demo import PRETRAINED_ARCH
    from prune_explorer.model.trust import BUILTIN

    assert PRETRAINED_ARCH in BUILTIN
    directory = store.save(build_model("squeezenet1_1", num_classes=3), tmp_path / "m")
    assert store.load(directory)(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_a_direct_build_model_call_still_refuses_what_is_not_a_module_class(hostile, tmp_path):
    with pytest.raises(UntrustedCode, match="not a torch.nn.Module subclass"):
        build_model("subprocess:run", args=["touch", str(hostile["ran"])])
    with pytest.raises(UntrustedCode, match="not a torch.nn.Module subclass"):
        build_model("os:system", command=f"touch {hostile['ran']}")
    assert not hostile["ran"].exists()


# --- the CLI: export and rank ----------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_export_refuses_a_hostile_model_directory(hostile, tmp_path, capsys, case):
    directory = hostile_dir(tmp_path / "m", hostile_specs(hostile)[case])
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(directory), "--output", str(out), "--input-shape", "3,8,8"]) == 1
    err = capsys.readouterr().err
    assert refused(err, directory), err
    assert not out.exists() and nothing_ran(hostile)


@pytest.mark.parametrize("case", CASES)
def test_rank_refuses_a_hostile_model_directory_and_a_hostile_trial(hostile, tmp_path, capsys, case):
    base = hostile_specs(hostile)[case]
    directory = hostile_dir(tmp_path / "m", base)
    trial = tmp_path / "trial"
    trial.mkdir()
    assert cli.main(["rank", str(trial), "--model", str(directory)]) == 2
    err = capsys.readouterr().err
    assert refused(err, directory), err

    (trial / "prune_explorer.json").write_text(json.dumps({"model": base, "input_size": [3, 8, 8]}))
    assert cli.main(["rank", str(trial)]) == 2  # no --model: the trial's own record names the model
    err = capsys.readouterr().err
    assert f"{trial}/prune_explorer.json: field 'model.arch'" in err, err
    assert nothing_ran(hostile)


def test_rank_and_export_take_the_trust_flag(hostile, tmp_path, capsys):
    directory = hostile_dir(tmp_path / "m", hostile_specs(hostile)["import side effect"])
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(directory), "--output", str(out), "--input-shape", "3,8,8",
                     "--trust-model-code", hostile["module"]]) == 0, capsys.readouterr().err
    assert out.is_file() and hostile["imported"].exists()


# --- the panel and jobs ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_explorer_from_iteration_refuses_a_hostile_iteration(hostile, tmp_path, case):
    from prune_explorer.widgets.explorer import Explorer

    directory = hostile_dir(tmp_path / "ws" / "iterations" / "iter-001", hostile_specs(hostile)[case])
    with pytest.raises(UntrustedCode) as caught:
        Explorer.from_iteration(tmp_path / "ws", "iter-001")
    assert refused(str(caught.value), directory)
    assert nothing_ran(hostile)


def test_a_local_job_on_a_hostile_model_fails_with_the_refusal_and_runs_nothing(hostile, tmp_path):
    """Every hostile directory as a job's model (a record anyone with the workspace could edit)."""
    queue = JobQueue(tmp_path / "ws", tracker=False)
    jobs = {case: queue.submit(hostile_dir(tmp_path / "models" / str(i), base), hyperparameters=QUICK)
            for i, (case, base) in enumerate(hostile_specs(hostile).items())}
    for case, job in jobs.items():
        done = queue.wait(job.id, timeout=300)
        directory = Path(done.model)
        assert done.status == FAILED, case
        metrics = json.loads((Path(done.out_dir) / "metrics.json").read_text())
        assert metrics["status"] == "failed" and refused(metrics["reason"], directory), metrics["reason"]
        assert f"{directory / 'model.json'}: field 'base.arch'" in done.log_tail(30)
    queue.close()
    assert nothing_ran(hostile)


def test_a_job_record_cannot_grant_itself_trust_but_the_queue_can(hostile, tmp_path):
    """A queued record naming a hostile model and `trust_model_code` for it still fails: a job gets
    the trust of the queue that starts it, never a record's. The same queue given the trust runs it."""
    workspace = tmp_path / "ws"
    directory = hostile_dir(tmp_path / "m", hostile_specs(hostile)["import side effect"])
    planted = Job(id=new_id("job"), backend="local", model=str(directory), out_dir=str(workspace / "iterations" / "x"),
                  iteration="x", hyperparameters={**QUICK, "trust_model_code": hostile["module"]})
    planted.save(workspace / "jobs")
    queue = JobQueue(workspace, tracker=False)
    done = queue.wait(planted.id, timeout=300)
    queue.close()
    assert done.status == FAILED and "--trust-model-code" in done.message
    assert nothing_ran(hostile)

    trusted = JobQueue(workspace, tracker=False, trust_code=[hostile["module"]])
    job = trusted.submit(directory, hyperparameters=QUICK, iteration="y")
    done = trusted.wait(job.id, timeout=300)
    trusted.close()
    assert done.status == COMPLETED, done.message
    assert done.hyperparameters["trust_model_code"] == hostile["module"]  # passed along explicitly
    assert Workspace(workspace, trust_code=hostile["module"]).open_iteration("y")[0].fc.out_features == 10


def test_user_scripts_run_only_where_the_queue_allows_them(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    marker = tmp_path / "SCRIPT_RAN"
    (scripts / "train.py").write_text(f"open({str(marker)!r}, 'w')\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "train.py").write_text(f"open({str(marker)!r}, 'w')\n")

    off = JobQueue(tmp_path / "ws", tracker=False, scripts=False)
    with pytest.raises(ValueError, match="user scripts are off here.*--allow-scripts"):
        off.submit("resnet18", entry_point="train.py", source_dir=scripts)
    folder = JobQueue(tmp_path / "ws", tracker=False, scripts=scripts)
    with pytest.raises(ValueError, match=f"outside '{scripts}'"):
        folder.submit("resnet18", entry_point="train.py", source_dir=outside)
    (scripts / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):  # a symlink out of the folder is outside too
        folder.submit("resnet18", entry_point="link/train.py", source_dir=scripts)

    planted = Job(id=new_id("job"), backend="local", model="resnet18", out_dir=str(tmp_path / "ws" / "iterations" / "p"),
                  entry_point="train.py", source_dir=str(outside))
    planted.save(tmp_path / "ws" / "jobs")
    folder.refresh()  # the queue picks up the record another process (anyone) wrote, and tries to start it
    done = folder.wait(planted.id, timeout=60)
    folder.close()
    off.close()
    assert done.status == FAILED and "outside" in done.message and done.backend_id is None
    assert not marker.exists()


def test_a_sagemaker_job_gets_the_queues_trust_as_a_hyperparameter(aws, tmp_path):
    directory = store.save(build_model("squeezenet1_1", num_classes=3), tmp_path / "m")
    queue = JobQueue(tmp_path / "ws", backend=backend(aws, debugger=False), tracker=False,
                     trust_code="mypkg,other.models")
    started = threading.Event()
    queue.on_change(lambda job: job.backend_id and started.set())
    job = queue.submit(directory, hyperparameters={"epochs": 1, "trust_model_code": "injected"})
    assert started.wait(60), "the queue never started the job"
    queue.close()
    described = aws["sagemaker"].describe_training_job(TrainingJobName=queue.get(job.id).backend_id)
    assert described["HyperParameters"]["trust_model_code"] == "mypkg,other.models"
