"""Export: ONNX Runtime and torch.export.load give PyTorch's outputs on pruned models, with no prune_explorer.

Tolerance: max |exported - PyTorch| <= 1e-4 (float32), on models whose outputs are O(1) (random
norm statistics and affine, Linear heads at PyTorch's default init), so the bound means something.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prune_explorer.cli import main as cli_main
from prune_explorer.model import store
from prune_explorer.model.export import (
    ExportError,
    export_model,
    onnxruntime_latency_ms,
    onnxruntime_session,
    read_metadata,
)
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.model.zoo import build_model
from prune_explorer.model.exactness import randomize_channel_params, randomize_norms

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4
SHAPE = (3, 32, 32)

ONNX_ALONE = r"""
import json, sys
import numpy as np
import onnxruntime as ort
path, inputs, expected = sys.argv[1:4]
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
out = session.run(None, {session.get_inputs()[0].name: np.load(inputs)})[0]
print(json.dumps({
    "max_abs_diff": float(np.abs(out - np.load(expected)).max()),
    "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "prune_explorer")),
    "input_shape": session.get_inputs()[0].shape,
    "metadata": session.get_modelmeta().custom_metadata_map,
}))
"""

PT2_ALONE = r"""
import json, sys
import numpy as np
import torch
path, inputs, expected = sys.argv[1:4]
module = torch.export.load(path).module()
with torch.no_grad():
    out = module(torch.from_numpy(np.load(inputs))).numpy()
print(json.dumps({
    "max_abs_diff": float(np.abs(out - np.load(expected)).max()),
    "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("torchvision", "prune_explorer")),
}))
"""


def pruned_model(arch: str, every: int = 3) -> tuple[nn.Module, nn.Module]:
    """(original, pruned): every `every`-th channel of every prunable group removed; O(1) outputs."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10)
    randomize_norms(model, torch.Generator().manual_seed(0))
    for module in model.modules():
        if isinstance(module, nn.Linear):  # torchvision's N(0, 0.01) heads would make 1e-4 a loose bound
            module.reset_parameters()
    model.eval()
    x = torch.zeros(1, *SHAPE)
    graph = ChannelGraph.trace(model, x)
    randomize_channel_params(model, graph, torch.Generator().manual_seed(1))   # ConvNeXt's layer_scale: 1e-6
    plan = PrunePlan({g.id: list(range(0, g.size, every)) for g in graph.prunable() if g.size > every})
    return model, prune(model, plan, x, graph=graph).eval()


def alone(script: str, *args, cwd: Path) -> dict:
    """Run `script` in an isolated interpreter (-I: no PYTHONPATH, no cwd on sys.path)."""
    done = subprocess.run([sys.executable, "-I", "-c", script, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def torch_outputs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v3_small",
                                        pytest.param("convnext_tiny", marks=pytest.mark.slow)])
def exported_onnx(request, tmp_path_factory):
    original, pruned = pruned_model(request.param)
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    result = export_model(pruned, path, example_inputs=torch.zeros(1, *SHAPE))
    return request.param, original, pruned, result


def test_onnx_runtime_equals_pytorch_on_the_pruned_model(exported_onnx):
    arch, original, pruned, result = exported_onnx
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in original.parameters())
    session = onnxruntime_session(result.path)
    for batch in (1, 3):  # the file takes any batch size
        x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(batch))
        expected = torch_outputs(pruned, x)
        assert np.abs(expected).max() > 0.1, "outputs too small for the tolerance to mean anything"
        actual = session.run(None, {"input": x.numpy()})[0]
        assert actual.shape == expected.shape == (batch, 10)
        assert np.abs(actual - expected).max() <= TOLERANCE, arch
    assert result.max_abs_diff <= TOLERANCE and result.dynamic_batch and result.exporter == "dynamo"


def test_onnx_file_holds_the_narrowed_layers_and_its_metadata(exported_onnx):
    import onnx

    arch, _, pruned, result = exported_onnx
    proto = onnx.load(str(result.path))
    shapes = {tuple(init.dims) for init in proto.graph.initializer}
    narrowed = [m.weight for m in pruned.modules() if isinstance(m, nn.Conv2d)][:3]
    assert all(tuple(w.shape) in shapes for w in narrowed), arch
    meta = read_metadata(result.path)
    assert json.loads(meta["example_input_shape"]) == [[1, *SHAPE]]
    assert int(meta["opset"]) == result.opset == proto.opset_import[0].version
    assert int(meta["params"]) == sum(p.numel() for p in pruned.parameters())
    assert json.loads(meta["base_architecture"])["arch"] == arch
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_onnx_file_runs_with_onnxruntime_alone(exported_onnx, tmp_path):
    arch, _, pruned, result = exported_onnx
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(7))
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "expected.npy", torch_outputs(pruned, x))
    report = alone(ONNX_ALONE, result.path, tmp_path / "x.npy", tmp_path / "expected.npy", cwd=tmp_path)
    assert report["imported"] == [], f"the ONNX file needed {report['imported']}"
    assert report["max_abs_diff"] <= TOLERANCE, arch
    assert report["input_shape"] == ["batch", *SHAPE]
    assert json.loads(report["metadata"]["example_input_shape"]) == [[1, *SHAPE]]


def test_pruned_norms_across_channels_export_exactly(tmp_path):
    """A PrunedChannelNorm of each form (closed form over one group; several groups through zeros
    put back in place) exports to ONNX and runs in ONNX Runtime as in PyTorch."""
    from prune_explorer.model.norms import PrunedChannelNorm

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.group = nn.GroupNorm(4, 8)
            self.layer = nn.LayerNorm(8)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            x = self.group(self.conv(x))
            return self.head(self.layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)).mean((2, 3))

    model = Net().eval()
    randomize_norms(model, torch.Generator().manual_seed(0))
    x = torch.randn(1, *SHAPE)
    pruned = prune(model, PrunePlan({"conv": [0, 1, 5]}), x).eval()
    assert isinstance(pruned.group, PrunedChannelNorm) and isinstance(pruned.layer, PrunedChannelNorm)
    result = export_model(pruned, tmp_path / "norms.onnx", example_inputs=x)
    assert result.max_abs_diff <= TOLERANCE
    x3 = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(3))
    actual = onnxruntime_session(result.path).run(None, {"input": x3.numpy()})[0]
    assert np.abs(actual - torch_outputs(pruned, x3)).max() <= TOLERANCE


def test_pt2_loads_with_torch_export_alone(tmp_path):
    _, pruned = pruned_model("resnet18")
    result = export_model(pruned, tmp_path / "model.pt2", example_inputs=torch.zeros(1, *SHAPE))
    assert result.format == "pt2" and result.max_abs_diff <= TOLERANCE
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "expected.npy", torch_outputs(pruned, x))
    report = alone(PT2_ALONE, result.path, tmp_path / "x.npy", tmp_path / "expected.npy", cwd=tmp_path)
    assert report["imported"] == [], f"the .pt2 file needed {report['imported']}"
    assert report["max_abs_diff"] <= TOLERANCE
    meta = read_metadata(result.path)
    assert json.loads(meta["example_input_shape"]) == [[1, *SHAPE]] and "opset" not in meta


def test_the_torchscript_exporter_is_exact_too_with_a_fixed_batch(tmp_path):
    _, pruned = pruned_model("resnet18")
    result = export_model(pruned, tmp_path / "ts.onnx", example_inputs=torch.zeros(1, *SHAPE),
                          exporter="torchscript", dynamic_batch=False)
    session = onnxruntime_session(result.path)
    assert session.get_inputs()[0].shape == [1, *SHAPE]
    x = torch.randn(1, *SHAPE)
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - torch_outputs(pruned, x)).max() <= TOLERANCE
    assert read_metadata(result.path)["exporter"] == "torchscript"


# --- what cannot be exported ----------------------------------------------------------------------
@torch.library.custom_op("prune_explorer_test::shifted_swish", mutates_args=())
def shifted_swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x) + 1


@shifted_swish.register_fake
def _(x):
    return torch.empty_like(x)


class SwishBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return shifted_swish(self.conv(x))


class CustomOpNet(nn.Module):
    """A user op with no ONNX translation, called inside a nested block."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(SwishBlock())

    def forward(self, x):
        return self.features(x).mean((2, 3))


class BranchingNet(nn.Module):
    """Data-dependent control flow: which branch runs depends on the input's values."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:
            return y.amax((2, 3))
        return -y.amax((2, 3))


def test_an_op_without_onnx_translation_is_named_with_its_module_and_nothing_is_written(tmp_path):
    target = tmp_path / "net.onnx"
    target.write_bytes(b"previous export")
    with pytest.raises(ExportError, match=r"prune_explorer_test\.shifted_swish.*module 'features\.0' \(SwishBlock\)"):
        export_model(CustomOpNet(), target, example_inputs=torch.randn(1, 3, 8, 8))
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"], "a temp file was left behind"


def test_data_dependent_branches_are_refused_with_the_line_not_baked_in(tmp_path):
    with pytest.raises(ExportError, match=r"BranchingNet.*torch\.export cannot capture.*test_export\.py.*y\.mean\(\) > 0"):
        export_model(BranchingNet(), tmp_path / "b.onnx", example_inputs=torch.randn(1, 3, 8, 8))
    with pytest.raises(ExportError, match="BranchingNet"):
        export_model(BranchingNet(), tmp_path / "b.pt2", example_inputs=torch.randn(1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_why_dynamo_is_the_default_torchscript_bakes_the_branch_it_saw(tmp_path):
    """The TorchScript exporter traces one run: the file answers with that branch for every input."""
    torch.manual_seed(0)
    net = BranchingNet().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # the export check's own input
    with torch.no_grad():
        assert (net.conv(x).mean() > 0) != (net.conv(-x).mean() > 0), "x and -x must take different branches"
    result = export_model(net, tmp_path / "ts.onnx", example_inputs=x, exporter="torchscript", dynamic_batch=False)
    session = onnxruntime_session(result.path)
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - torch_outputs(net, x)).max() <= TOLERANCE
    assert np.abs(session.run(None, {"input": (-x).numpy()})[0] - torch_outputs(net, -x)).max() > TOLERANCE


def test_bad_requests_are_refused_clearly(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(model, tmp_path / "m.tflite", example_inputs=x)
    with pytest.raises(ValueError, match="unknown ONNX exporter 'jit'"):
        export_model(model, tmp_path / "m.onnx", example_inputs=x, exporter="jit")
    with pytest.raises(ValueError, match="ONNX only"):
        export_model(model, tmp_path / "m.pt2", example_inputs=x, opset=17)
    with pytest.raises(IsADirectoryError, match="give a file name"):
        export_model(model, tmp_path, format="onnx", example_inputs=x)
    with pytest.raises(ValueError, match="example_inputs is required"):
        export_model(model, tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="not a saved model directory"):
        export_model(tmp_path / "nowhere", tmp_path / "m.onnx")
    saved = store.save(build_model("resnet18", num_classes=3), tmp_path / "saved")
    with pytest.raises(ValueError, match=r"saved/metrics\.json: no input_shape.*--input-shape"):
        export_model(saved, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


# --- ONNX Runtime latency -------------------------------------------------------------------------
@pytest.mark.parametrize("exported_onnx", ["resnet18"], indirect=True)
def test_onnxruntime_latency_times_modules_and_files_in_one_interleaved_run(exported_onnx):
    _, _, pruned, result = exported_onnx
    from_module, from_file = onnxruntime_latency_ms([pruned, result.path], torch.zeros(1, *SHAPE), warmup=1, repeats=3)
    assert from_module > 0 and from_file > 0
    with pytest.raises(ValueError, match="repeats"):
        onnxruntime_latency_ms([result.path], torch.zeros(1, *SHAPE), repeats=0)


# --- CLI ------------------------------------------------------------------------------------------
def test_cli_exports_a_model_directory(tmp_path, capsys):
    _, pruned = pruned_model("resnet18")
    model_dir = store.save(pruned, tmp_path / "pruned-model")
    out = tmp_path / "out" / "m.onnx"
    assert cli_main(["export", str(model_dir), "--input-shape", "3,32,32", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "opset 20" in printed and "any batch size" in printed
    x = torch.randn(2, *SHAPE)
    actual = onnxruntime_session(out).run(None, {"input": x.numpy()})[0]
    assert np.abs(actual - torch_outputs(store.load(model_dir), x)).max() <= TOLERANCE
    assert cli_main(["export", str(model_dir), "--input-shape", "3,x,32", "--output", str(out)]) == 1
    assert "--input-shape must look like 3,64,64" in capsys.readouterr().err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A real workspace: the headless loop's baseline and one pruned, fine-tuned iteration on digits."""
    from prune_explorer.loop import LoopConfig, run_loop

    root = tmp_path_factory.mktemp("ws")
    run_loop(LoopConfig(workspace=str(root), dataset="digits", model="resnet18", criterion="l1", per_iteration=48,
                        iterations=1, epochs=1, baseline_epochs=1, subset=120, val_subset=60, batch_size=30,
                        threshold=1.0, capture="compact", train_args={"measure_latency": False}), progress=False)
    return root


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "prune_explorer.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_cli_exports_a_workspace_iteration_end_to_end(workspace, tmp_path, fmt):
    done = _cli("export", "iter-001", "--workspace", str(workspace), "--format", fmt, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / f"iter-001.{fmt}"
    assert f"wrote iter-001.{fmt}" in done.stdout
    model_dir = workspace / "iterations" / "iter-001"
    shape = json.loads((model_dir / "metrics.json").read_text())["input_shape"]
    assert json.loads(read_metadata(out)["example_input_shape"]) == [[1, *shape]]
    model = store.load(model_dir)
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in store.load(workspace / "iterations" / "baseline").parameters())
    x = torch.randn(4, *shape)
    if fmt == "onnx":
        actual = onnxruntime_session(out).run(None, {"input": x.numpy()})[0]
    else:
        with torch.no_grad():
            actual = torch.export.load(out).module()(x).numpy()
    assert np.abs(actual - torch_outputs(model, x)).max() <= TOLERANCE


@pytest.mark.slow
def test_cli_names_the_iterations_there_when_one_is_unknown(workspace, tmp_path):
    done = _cli("export", "iter-042", "--workspace", str(workspace), cwd=tmp_path)
    assert done.returncode == 1
    assert "no iteration 'iter-042'" in done.stderr and "baseline, iter-001" in done.stderr
    assert list(tmp_path.iterdir()) == []
