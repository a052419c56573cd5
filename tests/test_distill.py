"""Distillation in the job contract (jobs/distill.py, job.JobContext.teacher / distill_loss): Hinton's loss
against a hand computation, the teacher frozen and unchanged by a job, a user's own script distilling,
the contract's options and SageMaker's teacher channel, and the loop/workspace resolving the teacher."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prune_explorer import job
from prune_explorer.jobs.distill import Teacher, distill_loss, weights_digest
from prune_explorer.model import store
from prune_explorer.jobs.train import train
from test_train import TRUST, one_thread  # noqa: F401  (one_thread: the module's autouse fixture)

TESTS = Path(__file__).resolve().parent
EXAMPLE = TESTS.parent / "examples" / "custom_training"
SMALL_CNN = "test_train:SmallCNN"
FAST = dict(dataset="digits", model=SMALL_CNN, lr=0.1, batch_size=32, capture_every=10, measure_latency=False,
            seed=0, trust_model_code=TRUST)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A trained SmallCNN on digits: the teacher of the jobs below."""
    out = tmp_path_factory.mktemp("teacher")
    train(dict(FAST, epochs=2, out_dir=str(out)))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_distill_loss_matches_a_hand_computation():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]]
    teacher = [[2.0, 1.0, 0.0], [0.5, 0.5, 1.0]]
    targets = [1, 2]
    alpha, t = 0.9, 4.0

    def softmax(row, temperature=1.0):
        e = [math.exp(v / temperature) for v in row]
        return [v / sum(e) for v in e]

    ce = sum(-math.log(softmax(s)[y]) for s, y in zip(student, targets)) / 2
    kl = sum(sum(pt * math.log(pt / ps) for pt, ps in zip(softmax(tr, t), softmax(st, t)))
             for st, tr in zip(student, teacher)) / 2
    expected = (1 - alpha) * ce + alpha * t * t * kl
    got = distill_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(targets), alpha, t)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(distill_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(targets), 0.0, t)) == \
        pytest.approx(ce, rel=1e-6)  # alpha 0: plain cross-entropy
    same = torch.tensor(teacher)  # a student equal to its teacher has nothing left to learn from it
    assert float(distill_loss(same, same, torch.tensor(targets), 1.0, t)) == pytest.approx(0.0, abs=1e-7)


def test_the_loss_sends_gradients_to_the_student_only_and_refuses_other_shapes():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    distill_loss(s, t, torch.tensor([0, 1, 2, 3])).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    with pytest.raises(ValueError, match=r"student logits \(4, 5\) and teacher logits \(4, 3\)"):
        distill_loss(s, torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))


def test_the_teacher_is_frozen_and_running_it_changes_nothing(teacher_dir):
    teacher = Teacher(teacher_dir, trust_code=TRUST)
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    x = torch.randn(8, 1, 8, 8)
    teacher.model.train()  # a careless script: its batch-norm statistics must still not move
    logits = teacher.logits(x)
    assert logits.shape == (8, 10) and logits.grad_fn is None and not teacher.model.training
    record = teacher.record()
    saved = store.load(teacher_dir, trust_code=TRUST)
    assert record["weights_sha256_before"] == record["weights_sha256_after"] == weights_digest(saved)
    assert record["calls"] == 1 and record["seconds"] >= 0
    with pytest.raises(FileNotFoundError, match="not a saved model directory"):
        Teacher(teacher_dir.parent, trust_code=TRUST)


def test_a_distilled_job_uses_the_teacher_per_batch_and_leaves_its_weights_unchanged(teacher_dir, tmp_path):
    before = sha256(teacher_dir / "model.safetensors"), sha256(teacher_dir / "model.json")
    common = dict(FAST, model=str(teacher_dir), epochs=1, subset=256, val_subset=100)
    plain = train(dict(common, out_dir=str(tmp_path / "plain")))
    zero = train(dict(common, out_dir=str(tmp_path / "zero"), teacher=str(teacher_dir), distill="parent",
                      distill_alpha=0.0))
    kd = train(dict(common, out_dir=str(tmp_path / "kd"), teacher=str(teacher_dir), distill="parent"))
    assert (sha256(teacher_dir / "model.safetensors"), sha256(teacher_dir / "model.json")) == before
    record = kd["teacher"]
    assert record["weights_sha256_before"] == record["weights_sha256_after"]
    assert record["calls"] == 256 // 32 and record["model"] == str(teacher_dir)  # one forward per training batch
    assert (record["distill"], record["alpha"], record["temperature"]) == ("parent", 0.9, 4.0)  # the defaults
    assert "teacher" not in plain and plain["epochs"][0]["cpu_seconds"] > 0

    def weights(name):
        return store.load(tmp_path / name, trust_code=TRUST).state_dict()

    # the same start, data and seed: alpha 0 trains exactly as plain cross-entropy, alpha 0.9 does not
    assert all(torch.equal(a, b) for a, b in zip(weights("plain").values(), weights("zero").values()))
    assert not all(torch.equal(a, b) for a, b in zip(weights("plain").values(), weights("kd").values()))


def test_a_users_own_script_distills_through_the_contract(teacher_dir, tmp_path):
    sys.path.insert(0, str(EXAMPLE))
    from make_digits import make_digits

    data = make_digits(tmp_path / "digits", per_class=6, size=8)
    # the example reads 3-channel images: a 3-channel teacher trained by the script itself
    path = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")

    def run(*args):
        return subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--data-dir", str(data), "--image-size", "8",
                               "--capture", "none", "--measure-latency", "false", "--epochs", "1", *args],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    made = run("--model", SMALL_CNN, "--model-kwargs", '{"in_channels": 3, "width": 4}', "--out-dir", "teacher3",
               "--trust-model-code", "test_train")
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    teacher3 = tmp_path / "teacher3"
    before = sha256(teacher3 / "model.safetensors")
    done = run("--model", str(teacher3), "--out-dir", "kd", "--teacher", str(teacher3), "--distill", "baseline",
               "--distill-temperature", "2", "--trust-model-code", "test_train")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    assert metrics["teacher"]["calls"] >= 1 and metrics["teacher"]["temperature"] == 2.0
    assert metrics["teacher"]["weights_sha256_before"] == metrics["teacher"]["weights_sha256_after"]
    assert sha256(teacher3 / "model.safetensors") == before and "teacher" in done.stdout


def test_the_contract_takes_the_teacher_from_arguments_or_the_sagemaker_channel(tmp_path, monkeypatch):
    spec = job.parse_spec(["--teacher", "t", "--distill", "parent", "--distill-alpha", "0.5",
                           "--distill_temperature", "2"])
    assert (spec.teacher, spec.distill, spec.distill_alpha, spec.distill_temperature) == ("t", "parent", 0.5, 2.0)
    for argv, field in ((["--distill-alpha", "1.5"], "distill_alpha"), (["--distill-temperature", "0"],
                        "distill_temperature"), (["--distill", "grandparent"], "distill must be one of")):
        with pytest.raises(ValueError, match=field):
            job.parse_spec(argv)
    with pytest.raises(ValueError, match="this job has no teacher"), \
            job.JobContext(job.JobSpec(out_dir=str(tmp_path / "out"))) as run:
        run.teacher()
    channel = tmp_path / "input" / "data" / "teacher"
    channel.mkdir(parents=True)
    monkeypatch.setenv("SM_CHANNEL_TEACHER", str(channel))
    assert job.resolve_locations(job.JobSpec()).teacher is None  # a channel without a saved model is no teacher
    (channel / "model.json").write_text("{}")
    assert job.resolve_locations(job.JobSpec()).teacher == str(channel)
    assert job.resolve_locations(job.JobSpec(teacher="mine")).teacher == "mine"


def test_the_workspace_turns_distill_into_the_jobs_teacher(teacher_dir, tmp_path):
    from prune_explorer.loop import LoopConfig
    from prune_explorer.workspace import BASELINE, Workspace

    space = Workspace(tmp_path / "ws")
    store.save(store.load(teacher_dir, trust_code=TRUST), space.iteration_dir(BASELINE))
    store.save(store.load(teacher_dir, trust_code=TRUST), space.iteration_dir("iter-001"))
    assert space.teacher_dir("baseline", "iter-001") == space.iteration_dir(BASELINE)
    assert space.teacher_dir("parent", "iter-001") == space.iteration_dir("iter-001")
    with pytest.raises(FileNotFoundError, match="iter-007 holds no saved model"):
        space.teacher_dir("parent", "iter-007")
    with pytest.raises(ValueError, match="got 'uncle'"):
        space.teacher_dir("uncle", "iter-001")

    config = LoopConfig(dataset="digits", distill="parent", distill_alpha=0.5).validate()
    args = config.hyperparameters(1)
    assert (args["distill"], args["distill_alpha"]) == ("parent", 0.5) and "distill_temperature" not in args
    assert "distill" not in config.hyperparameters(3, baseline=True)  # the baseline has no teacher
    with pytest.raises(ValueError, match="distill must be one of"):
        LoopConfig(dataset="digits", distill="teacher").validate()
    with pytest.raises(ValueError, match="need distill"):
        LoopConfig(dataset="digits", distill_temperature=2.0).validate()
