"""store + models: pruned models round-trip through model.json + model.safetensors, atomically, without pickle."""
from __future__ import annotations

import copy
import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

from conftest import require
from prune_explorer.model.zoo import BASE_ATTR, build_model
from prune_explorer.model import store
from prune_explorer.model.store import load_spec, save

X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --- hand-made narrowing (what surgery does, done by hand so store is tested on its own) ---------
def narrow_conv(conv: nn.Conv2d, out_idx=None, in_idx=None) -> nn.Conv2d:
    weight = conv.weight.detach()
    bias = None if conv.bias is None else conv.bias.detach()
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if out_idx is not None:
        weight = weight[out_idx]
        bias = None if bias is None else bias[out_idx]
    if in_idx is not None and not depthwise:
        weight = weight[:, in_idx]
    out_ch = weight.shape[0]
    in_ch = out_ch if depthwise else weight.shape[1]
    new = nn.Conv2d(in_ch, out_ch, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    groups=out_ch if depthwise else 1, bias=bias is not None)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def narrow_bn(bn: nn.BatchNorm2d, idx) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).data.copy_(getattr(bn, name).detach()[idx])
    new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def randomize_bn_stats(model: nn.Module) -> None:
    """Fresh BN layers are identities; give them real statistics so a lost buffer would show."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def narrowed_resnet18() -> nn.Module:
    model = build_model("resnet18", num_classes=10)
    randomize_bn_stats(model)
    for block, keep in ((model.layer1[0], list(range(0, 64, 2))), (model.layer3[1], list(range(100)))):
        block.conv1 = narrow_conv(block.conv1, out_idx=keep)
        block.bn1 = narrow_bn(block.bn1, keep)
        block.conv2 = narrow_conv(block.conv2, in_idx=keep)
    return model.eval()


def narrowed_mobilenet_v2() -> nn.Module:
    model = build_model("mobilenet_v2", num_classes=7)
    randomize_bn_stats(model)
    block = model.features[2].conv  # 1x1 expand 16->96, depthwise 96, 1x1 project 96->24
    keep = sorted(set(range(1, 96, 2)) | {0, 94})
    block[0][0] = narrow_conv(block[0][0], out_idx=keep)
    block[0][1] = narrow_bn(block[0][1], keep)
    block[1][0] = narrow_conv(block[1][0], out_idx=keep)
    block[1][1] = narrow_bn(block[1][1], keep)
    block[2] = narrow_conv(block[2], in_idx=keep)
    return model.eval()


# --- small user models ("package.module:ClassName") ----------------------------------------------
class TiedNet(nn.Module):
    """Tied weights, a buffer viewing a parameter's storage, a non-contiguous parameter."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.encoder = nn.Linear(width, width)
        self.decoder = nn.Linear(width, width)
        self.decoder.weight = self.encoder.weight
        self.proj = nn.Linear(width, 6)
        self.proj.weight = nn.Parameter(torch.randn(width, 6).t())
        self.register_buffer("first_rows", self.encoder.weight.detach()[:2])

    def forward(self, x):
        return self.proj(torch.relu(self.decoder(torch.relu(self.encoder(x))))) + self.first_rows.sum()


class Scale(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * self.weight[None, :, None, None]


class ScaledNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.scale = Scale(8)

    def forward(self, x):
        return self.scale(self.conv(x))


class ScaledHeadNet(ScaledNet):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.scale(self.conv(x)))


class GroupNormNet(nn.Module):
    """A stream normalised by a GroupNorm with several groups (pruned: a PrunedChannelNorm)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.GroupNorm(4, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))))


USER = __name__


def load(directory):
    """store.load trusting this file's own model classes (a model.json naming them is not code from elsewhere)."""
    return store.load(directory, trust_code=[USER])


def outputs_equal(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# --- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [narrowed_resnet18, narrowed_mobilenet_v2])
def test_round_trip_narrowed_model_gives_identical_outputs(tmp_path, make):
    model = make()
    save(model, tmp_path / "m", metadata={"accuracy": 0.75, "plan": {"layer1.0.conv1": 32}})
    loaded = load(tmp_path / "m")
    assert not loaded.training
    assert outputs_equal(model, loaded, X32)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert getattr(loaded, BASE_ATTR) == getattr(model, BASE_ATTR)


def test_round_trip_restores_narrowed_layer_shapes(tmp_path):
    model = narrowed_mobilenet_v2()
    save(model, tmp_path / "m")
    loaded = load(tmp_path / "m")
    dw = loaded.features[2].conv[1][0]
    assert (dw.in_channels, dw.out_channels, dw.groups) == (50, 50, 50)
    assert loaded.features[2].conv[2].in_channels == 50
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_round_trip_real_prune_output(tmp_path):
    require(importlib.util.find_spec("prune_explorer.model.surgery") is not None, "prune_explorer.model.surgery")
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.model.plan import PrunePlan
    from prune_explorer.model.surgery import prune

    model = build_model("resnet18", num_classes=10).eval()
    randomize_bn_stats(model)
    graph = ChannelGraph.trace(model, X32)
    groups = graph.prunable()
    plan = PrunePlan({groups[0].name: [0, 3, 7], groups[-1].name: list(range(5))})
    pruned = prune(model, plan, X32, graph=graph)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    save(pruned, tmp_path / "pruned", metadata={"plan": plan.summary()})
    loaded = load(tmp_path / "pruned")
    assert outputs_equal(pruned, loaded, X32)
    assert load_spec(tmp_path / "pruned")["metadata"]["plan"] == json.loads(json.dumps(plan.summary()))


def test_tied_viewed_and_noncontiguous_tensors_round_trip(tmp_path):
    model = build_model(f"{USER}:TiedNet", width=8)
    assert not model.proj.weight.is_contiguous()
    save(model, tmp_path / "m")
    spec = load_spec(tmp_path / "m")
    assert spec["tied"] == {"decoder.weight": "encoder.weight"}
    loaded = load(tmp_path / "m")
    assert loaded.decoder.weight is loaded.encoder.weight
    x = torch.randn(3, 8)
    assert outputs_equal(model, loaded, x)


def test_half_precision_model_stays_half(tmp_path):
    model = build_model(f"{USER}:TiedNet").half()
    save(model, tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert loaded.encoder.weight.dtype == torch.float16
    assert torch.equal(loaded.proj.weight, model.proj.weight)


def test_save_over_existing_model_replaces_it_whole(tmp_path):
    target = tmp_path / "m"
    save(narrowed_resnet18(), target, metadata={"accuracy": 0.5})
    first_id = load_spec(target)["save_id"]
    second = build_model("resnet18", num_classes=10).eval()
    save(second, target, metadata={"accuracy": 0.9})
    spec = load_spec(target)
    assert spec["save_id"] != first_id and spec["metadata"] == {"accuracy": 0.9}
    assert sorted(p.name for p in target.iterdir()) == ["model.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    loaded = load(target)
    assert loaded.layer1[0].conv1.out_channels == 64
    assert outputs_equal(second, loaded, X32)


def test_load_spec_reads_json_only(tmp_path):
    save(narrowed_resnet18(), tmp_path / "m", metadata={"accuracy": 0.8})
    (tmp_path / "m" / "model.safetensors").unlink()
    spec = load_spec(tmp_path / "m")
    assert spec["base"] == {"arch": "resnet18", "kwargs": {"num_classes": 10}}
    assert spec["modules"]["layer1.0.conv1"]["out_channels"] == 32
    assert spec["modules"]["layer3.1.conv2"]["in_channels"] == 100
    assert spec["metadata"] == {"accuracy": 0.8}


# --- atomicity -----------------------------------------------------------------------------------
def _crashing_writer(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"partial")
    raise OSError("simulated crash while writing weights")


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_failed_save_leaves_previous_model_intact(tmp_path, monkeypatch):
    target = tmp_path / "m"
    model = narrowed_resnet18()
    save(model, target)
    before = _snapshot(target)
    monkeypatch.setattr(safetensors.torch, "save_file", _crashing_writer)
    with pytest.raises(OSError, match="simulated crash"):
        save(build_model("resnet18", num_classes=10), target)
    assert _snapshot(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    monkeypatch.undo()
    assert outputs_equal(model, load(target), X32)


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors.torch, "save_file", _crashing_writer)
    with pytest.raises(OSError):
        save(build_model(f"{USER}:TiedNet"), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_save_into_workspace_dir_keeps_other_files_and_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "iteration"
    (target / "trial").mkdir(parents=True)
    (target / "trial" / "events").write_text("e")
    (target / "metrics.json").write_text("{}")
    model = build_model(f"{USER}:TiedNet")
    save(model, target)
    before = _snapshot(target)
    monkeypatch.setattr(safetensors.torch, "save_file", _crashing_writer)
    with pytest.raises(OSError):
        save(build_model(f"{USER}:TiedNet"), target)
    assert _snapshot(target) == before
    monkeypatch.undo()
    other = build_model(f"{USER}:TiedNet")
    save(other, target)
    assert (target / "trial" / "events").read_text() == "e"
    assert sorted(p.name for p in target.iterdir()) == ["metrics.json", "model.json", "model.safetensors", "trial"]
    assert outputs_equal(other, load(target), torch.randn(2, 8))


def test_json_and_weights_from_different_saves_are_refused(tmp_path):
    target = tmp_path / "iteration"
    target.mkdir()
    (target / "train.log").write_text("log")
    save(build_model(f"{USER}:TiedNet"), target)
    old_json = (target / "model.json").read_text()
    save(build_model(f"{USER}:TiedNet"), target)
    (target / "model.json").write_text(old_json)  # as if a crash fell between the two renames
    with pytest.raises(ValueError, match=r"model\.safetensors.*save_id"):
        load(target)


# --- no pickle -----------------------------------------------------------------------------------
def test_files_are_json_and_safetensors_and_load_never_unpickles(tmp_path, monkeypatch):
    model = narrowed_resnet18()
    save(model, tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "model.json").read_text())
    assert spec["format"] == "prune_explorer.model" and spec["format_version"] == 4
    with safetensors.safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(model.state_dict())

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during load")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert outputs_equal(model, load(tmp_path / "m"), X32)


# --- bad input -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_resnet(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("saved") / "m"
    save(narrowed_resnet18(), directory)
    return directory


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("model.json", "model.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _edit_json(directory: Path, edit) -> None:
    spec = json.loads((directory / "model.json").read_text())
    edit(spec)
    (directory / "model.json").write_text(json.dumps(spec))


def _edit_tensors(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = safetensors.torch.load_file(str(path))
    edit(tensors)
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def test_missing_files_are_named(tmp_path, saved_resnet):
    with pytest.raises(FileNotFoundError, match=r"model\.json"):
        load(tmp_path / "nowhere")
    d = _copy_model(saved_resnet, tmp_path / "d")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load(d)


def test_corrupt_json_is_named(tmp_path, saved_resnet):
    d = _copy_model(saved_resnet, tmp_path / "d")
    (d / "model.json").write_text('{"format": "prune_explorer.model", ')
    with pytest.raises(ValueError, match=r"model\.json: not valid JSON"):
        load(d)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda s: s.update(format_version=99), r"'format_version' is 99, newer.*upgrade"),
        (lambda s: s.update(format_version="1"), r"'format_version'"),
        (lambda s: s.update(format="something.else"), r"'format'"),
        (lambda s: s.pop("base"), r"'base' is missing"),
        (lambda s: s["base"].update(arch="resnet81"), r"'base'.*resnet81.*close matches: resnet18"),
        (lambda s: s["modules"]["layer1.0.conv1"].update(kind="conv9d"), r"'modules\.layer1\.0\.conv1\.kind'"),
        (lambda s: s["modules"].update({"layer9.conv": s["modules"]["conv1"]}), r"'modules\.layer9\.conv'"),
        (lambda s: s["modules"]["layer1.0.conv1"].update(out_channels="many"),
         r"'modules\.layer1\.0\.conv1\.out_channels' is 'many'"),
        (lambda s: s["modules"]["layer1.0.bn1"].update(kind="linear"), r"'modules\.layer1\.0\.bn1\.kind'"),
    ],
)
def test_bad_model_json_fields_are_named(tmp_path, saved_resnet, edit, field):
    d = _copy_model(saved_resnet, tmp_path / "d")
    _edit_json(d, edit)
    with pytest.raises(ValueError, match=r"model\.json") as info:
        load(d)
    assert info.match(field)


def test_missing_tensor_is_named(tmp_path, saved_resnet):
    d = _copy_model(saved_resnet, tmp_path / "d")
    _edit_tensors(d, lambda t: t.pop("layer1.0.bn1.running_var"))
    with pytest.raises(ValueError, match=r"model\.safetensors.*missing tensor 'layer1\.0\.bn1\.running_var'"):
        load(d)


def test_extra_tensor_is_named(tmp_path, saved_resnet):
    d = _copy_model(saved_resnet, tmp_path / "d")
    _edit_tensors(d, lambda t: t.update({"head.weight": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"model\.safetensors.*unexpected tensor 'head\.weight'"):
        load(d)


def test_mismatched_tensor_names_both_shapes(tmp_path, saved_resnet):
    d = _copy_model(saved_resnet, tmp_path / "d")
    _edit_json(d, lambda s: s["modules"]["layer1.0.bn1"].update(num_features=30))
    with pytest.raises(ValueError) as info:
        load(d)
    message = str(info.value)
    assert "model.safetensors" in message and "'layer1.0.bn1.weight'" in message
    assert "(32,)" in message and "(30,)" in message


def test_truncated_weights_are_named(tmp_path, saved_resnet):
    d = _copy_model(saved_resnet, tmp_path / "d")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        load(d)


def test_save_without_known_base_asks_for_arch(tmp_path):
    import torchvision

    plain = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(ValueError, match="arch="):
        save(plain, tmp_path / "m")
    save(plain, tmp_path / "m", arch="resnet18", arch_kwargs={"num_classes": 10})
    assert outputs_equal(plain, load(tmp_path / "m"), X32)


def test_format_1_model_json_still_loads(tmp_path, saved_resnet):
    d = _copy_model(saved_resnet, tmp_path / "d")

    def to_v1(spec):
        spec["format_version"] = 1
        spec.pop("resized")
        names = dict(build_model("resnet18", num_classes=10).named_modules())
        for name, record in spec["modules"].items():
            record["type"] = type(names[name]).__name__
            record.pop("kind")
    _edit_json(d, to_v1)
    assert outputs_equal(load(saved_resnet), load(d), X32)


def test_format_2_model_json_still_loads(tmp_path, saved_resnet):
    d = _copy_model(saved_resnet, tmp_path / "d")
    _edit_json(d, lambda spec: spec.update(format_version=2))   # format 3 only adds the channel_norm kind
    assert outputs_equal(load(saved_resnet), load(d), X32)


@pytest.fixture(scope="module")
def saved_group_norm(tmp_path_factory) -> Path:
    from prune_explorer.model.plan import PrunePlan
    from prune_explorer.model.surgery import prune

    torch.manual_seed(0)
    model = build_model(f"{USER}:GroupNormNet").eval()
    with torch.no_grad():
        model.norm.weight.copy_(torch.randn(8)), model.norm.bias.copy_(torch.randn(8))
    directory = tmp_path_factory.mktemp("saved") / "gn"
    save(prune(model, PrunePlan({"conv": [0, 1, 5]}), X32), directory)
    return directory


def test_pruned_group_norm_round_trips_as_its_record_says(tmp_path, saved_group_norm):
    from prune_explorer.model.norms import PrunedChannelNorm

    record = load_spec(saved_group_norm)["modules"]["norm"]
    assert record == {"kind": "channel_norm", "num_channels": 5, "full_width": 8, "axis": 1, "num_groups": 4,
                      "spatial": True, "eps": 1e-05, "affine": True, "bias": True, "kept": [2, 3, 4, 6, 7]}
    loaded = load(saved_group_norm)
    assert isinstance(loaded.norm, PrunedChannelNorm) and loaded.norm.kept == (2, 3, 4, 6, 7)
    copy_dir = _copy_model(saved_group_norm, tmp_path / "again")
    assert outputs_equal(loaded, load(copy_dir), X32)


@pytest.mark.parametrize(("edit", "field"), [
    (lambda r: r.pop("full_width"), r"'modules\.norm' \(channel_norm\): missing \['full_width'\]"),
    (lambda r: r.update(num_groups="four"), r"'modules\.norm' \(channel_norm\): 'num_groups' is 'four'"),
    (lambda r: r.update(num_channels=9), r"'modules\.norm' \(channel_norm\): .*num_channels 9"),
    (lambda r: r.update(kept=[0, 1]), r"'modules\.norm' \(channel_norm\): .*kept must be 5"),
])
def test_bad_channel_norm_records_are_named(tmp_path, saved_group_norm, edit, field):
    d = _copy_model(saved_group_norm, tmp_path / "d")
    _edit_json(d, lambda spec: edit(spec["modules"]["norm"]))
    with pytest.raises(ValueError, match=r"model\.json") as info:
        load(d)
    assert info.match(field)


def test_save_refuses_a_tensor_the_base_cannot_hold(tmp_path):
    model = build_model(f"{USER}:ScaledNet")
    model.scale.weight = nn.Parameter(torch.ones(8, 1))
    with pytest.raises(ValueError, match=r"Scale 'scale': weight has shape \(8, 1\) but base .* has \(8,\)"):
        save(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_resized_per_channel_parameter_round_trips(tmp_path):
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.model.plan import PrunePlan
    from prune_explorer.model.surgery import prune

    model = build_model(f"{USER}:ScaledHeadNet").eval()
    with torch.no_grad():
        model.scale.weight.copy_(torch.randn(8))
    graph = ChannelGraph.trace(model, X32)
    assert graph.slices["scale.weight"].kind == "channel_param"
    pruned = prune(model, PrunePlan({"conv": [1, 6]}), X32, graph=graph)
    save(pruned, tmp_path / "m")
    assert load_spec(tmp_path / "m")["resized"] == {"scale.weight": [6]}
    loaded = load(tmp_path / "m")
    assert loaded.scale.weight.shape == (6,) and outputs_equal(pruned, loaded, X32)


def test_save_refuses_non_json_metadata(tmp_path):
    with pytest.raises(ValueError, match="metadata"):
        save(build_model(f"{USER}:TiedNet"), tmp_path / "m", metadata={"when": object()})
    assert not (tmp_path / "m").exists()


# --- models.build_model --------------------------------------------------------------------------
def test_unknown_arch_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet81'.*resnet18"):
        build_model("resnet81")


def test_user_model_errors_are_clear():
    with pytest.raises(ValueError, match=r"cannot import module 'no_such_pkg_xyz\.models'"):
        build_model("no_such_pkg_xyz.models:Net")
    with pytest.raises(ValueError, match="has no attribute 'Missing'"):
        build_model(f"{USER}:Missing")
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        build_model("collections:OrderedDict")


def test_spec_tag_survives_deepcopy():
    model = build_model(f"{USER}:TiedNet", width=4)
    assert getattr(copy.deepcopy(model), BASE_ATTR) == {"arch": f"{USER}:TiedNet", "kwargs": {"width": 4}}


def test_kwargs_must_be_json():
    with pytest.raises(ValueError, match="'width'"):
        build_model(f"{USER}:TiedNet", width=object())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_is_loaded(tmp_path, suffix):
    source = build_model(f"{USER}:ScaledNet")
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        safetensors.torch.save_file(source.state_dict(), str(path))
    model = build_model(f"{USER}:ScaledNet", weights=path)
    assert torch.equal(model.conv.weight, source.conv.weight)
    assert getattr(model, BASE_ATTR)["kwargs"] == {}


def test_local_weights_never_unpickle_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Scale(3)}, path)
    with pytest.raises(pickle.UnpicklingError):
        build_model(f"{USER}:ScaledNet", weights=path)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        build_model(f"{USER}:ScaledNet", weights=tmp_path / "absent.pth")


@pytest.mark.parametrize(("arch", "kwargs", "size"), [
    ("convnext_tiny", {"num_classes": 10}, 32),            # channels-last Linear widths, LayerNorm2d
    ("resnext50_32x4d", {"num_classes": 10}, 32),          # grouped convs
    ("shufflenet_v2_x0_5", {"num_classes": 10}, 64),       # shuffles and chunks
    ("vit_b_16", {"num_classes": 10, "image_size": 32}, 32),  # MLP widths
])
def test_every_newly_prunable_architecture_round_trips(tmp_path, arch, kwargs, size):
    from prune_explorer.model.exactness import check

    model = build_model(arch, **kwargs)
    x = torch.randn(1, 3, size, size)
    pruned = check(model, x).pruned
    save(pruned, tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    assert outputs_equal(pruned, loaded, x)


def test_pruned_convnext_round_trips_with_its_layer_norms_as_recorded(tmp_path):
    """Its streams pass LayerNorm2d (channels first) and channels-last LayerNorms: both become
    PrunedChannelNorms, recorded by kind, rebuilt by load, outputs unchanged."""
    from prune_explorer.model.exactness import random_plan, randomize_channel_params, randomize_norms
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.model.norms import PrunedChannelNorm
    from prune_explorer.model.plan import PrunePlan
    from prune_explorer.model.surgery import prune

    model = build_model("convnext_tiny", num_classes=10).eval()
    gen = torch.Generator().manual_seed(0)
    randomize_norms(model, gen)
    graph = ChannelGraph.trace(model, X32)
    randomize_channel_params(model, graph, gen)
    pruned = prune(model, PrunePlan(random_plan(graph, gen)), X32, graph=graph).eval()
    save(pruned, tmp_path / "m")
    records = load_spec(tmp_path / "m")["modules"]
    assert records["features.0.1"]["kind"] == records["features.1.0.block.2"]["kind"] == "channel_norm"
    assert (records["features.0.1"]["axis"], records["features.1.0.block.2"]["axis"]) == (-3, -1)
    loaded = load(tmp_path / "m")
    assert isinstance(loaded.features[0][1], PrunedChannelNorm)
    assert outputs_equal(pruned, loaded, X32)
