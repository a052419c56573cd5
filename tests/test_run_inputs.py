"""`prune-explorer run` checks every input before any work (loop/checks.py): a bad number, a path that
does not exist, a --per-iteration the model cannot give — refused with exit code 2, the setting named,
nothing written."""
from __future__ import annotations

import pytest

from prune_explorer.cli import main as cli_main
from prune_explorer.loop import LoopConfig, run_loop
from prune_explorer.loop.checks import Refused, check_numbers
from prune_explorer.workspace import Workspace

TINY = ["--dataset=digits", "--subset=120", "--val-subset=60", "--image-size=8", "--batch-size=30",
        "--baseline-epochs=1", "--quiet"]


@pytest.mark.parametrize("flag, value, words", [
    ("--lr", "-0.1", "lr (--lr) must be > 0"),
    ("--baseline-lr", "0", "baseline_lr (--baseline-lr) must be > 0"),
    ("--lr", "nan", "must be a finite number"),
    ("--batch-size", "0", "batch_size (--batch-size) must be a whole number >= 1"),
    ("--subset", "-5", "subset (--subset) must be a whole number >= 1"),
    ("--val-subset", "0", "val_subset (--val-subset) must be"),
    ("--image-size", "0", "image_size (--image-size) must be"),
    ("--min-params", "-1", "min_params (--min-params) must be >= 0"),
    ("--epochs", "0", "epochs (--epochs) must be"),
    ("--weight-decay", "-1e-4", "weight_decay (--weight-decay) must be >= 0"),
    ("--seed", "-3", "seed (--seed) must be >= 0"),
    ("--iterations", "-1", "iterations (--iterations) must be >= 0"),
])
def test_numbers_out_of_range_are_refused_before_any_work(tmp_path, capsys, flag, value, words):
    """Issue 22: `--lr -0.1` pruned, launched a job, printed a 15-line traceback and exited 0."""
    ws = tmp_path / "ws"
    assert cli_main(["run", f"--workspace={ws}", *TINY, f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert not ws.exists()  # nothing written, not even the workspace folder


def test_check_numbers_knows_every_number_the_loop_takes():
    check_numbers(LoopConfig())  # the defaults pass
    with pytest.raises(ValueError, match="per_iteration"):
        check_numbers(LoopConfig(per_iteration=0))
    with pytest.raises(ValueError, match="whole number"):
        check_numbers(LoopConfig(epochs=1.5))


def test_a_data_dir_that_does_not_hold_the_data_is_refused_never_replaced(tmp_path, capsys):
    """Issue 22: a typo in --data-dir trained on the system Fashion-MNIST, exit 0."""
    ws = tmp_path / "ws"
    typo = tmp_path / "fashoin-mnist"
    assert cli_main(["run", f"--workspace={ws}", "--dataset=fashion-mnist", f"--data-dir={typo}", "--quiet"]) == 2
    assert f"--data-dir {typo}: no such folder" in capsys.readouterr().err
    typo.mkdir()
    assert cli_main(["run", f"--workspace={ws}", "--dataset=fashion-mnist", f"--data-dir={typo}", "--quiet"]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    assert cli_main(["run", f"--workspace={ws}", "--dataset=digits", f"--data-dir={typo}", "--quiet"]) == 2
    assert "reads no folder" in capsys.readouterr().err
    assert cli_main(["run", f"--workspace={ws}", "--dataset=imagefolder", f"--data-dir={typo / 'x'}", "--quiet"]) == 2
    assert cli_main(["run", f"--workspace={ws}", "--weights=missing.pth", "--quiet"]) == 2
    assert "--weights missing.pth: no such file" in capsys.readouterr().err
    assert cli_main(["run", f"--workspace={ws}", f"--model={tmp_path / 'nomodel'}", "--quiet"]) == 2
    assert "not a saved model directory" in capsys.readouterr().err
    assert cli_main(["run", f"--workspace={ws}", "--entry-point=absent.py", "--quiet"]) == 2
    assert "absent.py" in capsys.readouterr().err
    assert not ws.exists()


def test_per_iteration_beyond_the_model_is_refused_on_a_new_workspace_before_its_baseline_trains(tmp_path, capsys):
    """The README's "every input is checked before any work": a new workspace's --per-iteration typo trained
    the whole baseline first, then was refused, leaving the workspace behind."""
    ws = tmp_path / "ws"
    assert cli_main(["run", f"--workspace={ws}", *TINY, "--iterations=1", "--per-iteration=100000"]) == 2
    err = capsys.readouterr().err
    assert "--per-iteration 100,000: the internal channel groups of baseline can give at most 1,912 filters" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not ws.exists()  # no baseline trained, nothing written


@pytest.fixture(scope="module")
def baseline_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs") / "ws"
    run_loop(LoopConfig(workspace=str(root), iterations=0, dataset="digits", subset=120, val_subset=60, image_size=8,
                        batch_size=30, baseline_epochs=1), progress=False)
    return root


def test_per_iteration_beyond_what_the_groups_can_give_is_refused(baseline_workspace, capsys):
    """Issue 22: `--per-iteration 100000` cut every internal conv to one channel (accuracy 12.5 %), no warning."""
    jobs = sorted(p.name for p in (baseline_workspace / "jobs").glob("*.json"))
    code = cli_main(["run", f"--workspace={baseline_workspace}", "--iterations=1", "--per-iteration=100000",
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--per-iteration 100,000: the internal channel groups of baseline can give at most" in err
    assert "each group keeps one channel" in err
    assert sorted(p.name for p in (baseline_workspace / "jobs").glob("*.json")) == jobs
    assert Workspace(baseline_workspace).completed_iterations() == []
    assert not (baseline_workspace / "iterations" / "iter-001").exists()


def test_a_refused_run_is_a_refusal_in_python_too(baseline_workspace):
    with pytest.raises(Refused):
        run_loop(LoopConfig(workspace=str(baseline_workspace), iterations=1, lr=-1.0), progress=False)
    with pytest.raises(ValueError, match="--per-iteration"):  # Refused is a ValueError too
        run_loop(LoopConfig(workspace=str(baseline_workspace), iterations=1, per_iteration=10**6, dataset="digits",
                            subset=120, val_subset=60, image_size=8, batch_size=30, baseline_epochs=1), progress=False)


def test_an_unknown_start_is_refused_naming_the_flag(baseline_workspace, capsys):
    """`run --from iter-009` said `start_from: ...`, a name the command line does not have."""
    assert cli_main(["run", f"--workspace={baseline_workspace}", "--from=iter-009", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "start_from (--from): 'iter-009' is not a completed iteration" in err and err.count("\n") == 1


def test_a_filter_count_and_a_cost_target_together_are_refused(tmp_path, capsys):
    """`--per-iteration 50 --target-macs 0.5` ran the MACs target and dropped the 50 without a word."""
    ws = tmp_path / "ws"
    for target in ("--target-macs=0.5", "--target-latency=0.7"):
        assert cli_main(["run", f"--workspace={ws}", *TINY, "--per-iteration=50", target]) == 2
        err = capsys.readouterr().err
        assert f"--per-iteration and {target.split('=')[0]} are two budgets: give one" in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not ws.exists()


def test_sagemaker_without_an_aws_region_is_refused_before_the_workspace_is_made(tmp_path, capsys, monkeypatch):
    """`run --backend sagemaker` with no region: the SDK's error came after the workspace was made, exit 1."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    ws = tmp_path / "ws"
    for flags in (["--backend=sagemaker"], ["--tracker=sagemaker-experiments"]):
        assert cli_main(["run", f"--workspace={ws}", *TINY, *flags]) == 2
        err = capsys.readouterr().err
        assert f"{flags[0].replace('=', ' ')}: no AWS region; give --region" in err and err.count("\n") == 1
    assert not ws.exists()
