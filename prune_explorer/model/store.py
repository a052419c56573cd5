"""Save and load a (pruned) model without pickle: `model.json` + `model.safetensors`.

`model.json` names the base architecture (rebuilt with `zoo.build_model`), the width attributes of
every conv / norm / linear layer (which attributes: the layer-kind registry, `kinds/`), and the
other tensors whose shape pruning changed (a per-channel `layer_scale`). `load` builds the base,
narrows those modules *in place* (so subclasses with their own constructors and forward code,
e.g. a Conv2d subclass or LayerNorm2d, stay what they are) — except where pruning replaced a
module (a norm across channels became a `PrunedChannelNorm`: its record says how to build it) —
then loads the weights strictly. Saves are atomic: files are written beside the target and moved in
with renames, so a crash leaves either the previous model or the new one, never a mix.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from .. import __version__
from .kinds import KINDS, recorded_kind, recorded_kinds, replace_module, width_record
from .trust import UntrustedCode
from .zoo import base_spec, build_from_spec, build_model, tag_base

FORMAT = "prune_explorer.model"
FORMAT_VERSION = 4   # 3: records of kind "channel_norm" (a PrunedChannelNorm in place of a base norm);
#                      4: "sizes", module attributes pruning rewrote (split sizes, slice bounds: kinds/sizes.py)
SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_FILES = (SPEC_FILE, WEIGHTS_FILE)
METADATA_ATTR = "prune_explorer_metadata"
_SAVE_ID_KEY = "prune_explorer.save_id"

_V1_TYPES = {  # format 1 recorded the class name; format 2 records the layer kind
    "Conv1d": "conv", "Conv2d": "conv", "Conv3d": "conv", "ConvTranspose1d": "conv", "ConvTranspose2d": "conv",
    "ConvTranspose3d": "conv", "BatchNorm1d": "batch_norm", "BatchNorm2d": "batch_norm", "BatchNorm3d": "batch_norm",
    "SyncBatchNorm": "batch_norm", "InstanceNorm1d": "batch_norm", "InstanceNorm2d": "batch_norm",
    "InstanceNorm3d": "batch_norm", "GroupNorm": "group_norm", "LayerNorm": "layer_norm", "Linear": "linear",
}


def module_record(module: nn.Module) -> dict[str, Any] | None:
    """JSON width attributes of `module` (its layer kind's), or None if store does not record it."""
    record = width_record(module)
    return None if record is None else json.loads(json.dumps(record))


# --- save -------------------------------------------------------------------------------------
def save(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write `model` to `directory` (model.json + model.safetensors), replacing any model there.

    The base architecture comes from `arch`/`arch_kwargs`, else from the tag `build_model` set.
    `metadata` (JSON values: accuracy, plan summary, ...) is stored in model.json as is.
    Other files in `directory` (a workspace iteration's trial/, logs) are left alone.
    """
    directory = Path(directory)
    base = _resolve_base(model, arch, arch_kwargs)
    records = {
        name: record
        for name, module in model.named_modules(remove_duplicate=False)
        if (record := module_record(module)) is not None
    }
    reference = _reference(base)
    resized = _resized_beyond_records(model, reference, base, records)
    sizes = _sizes_beyond_records(model, reference, records)
    tensors, tied = _flat_tensors(model.state_dict())
    save_id = uuid.uuid4().hex
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "save_id": save_id,
        "base": base,
        "modules": records,
        "tied": tied,
        "resized": resized,
        "sizes": sizes,
        "params": sum(p.numel() for p in model.parameters()),
        "metadata": dict(metadata or {}),
        "saved_with": {"prune_explorer": __version__, "torch": torch.__version__},
    }
    try:
        spec_text = json.dumps(spec, indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot save to {directory}: metadata is not plain JSON ({exc})") from exc
    _write_model(directory, spec_text, tensors, save_id)
    return directory


def _resolve_base(model: nn.Module, arch: str | None, arch_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    tagged = base_spec(model)
    if arch is None:
        if tagged is None:
            raise ValueError(
                "save() needs the base architecture: build the model with prune_explorer.model.zoo.build_model "
                "or pass arch='resnet18' (a torchvision name or 'package.module:ClassName')"
            )
        arch = tagged["arch"]
        kwargs = tagged["kwargs"] if arch_kwargs is None else arch_kwargs
    else:
        same = tagged is not None and tagged["arch"] == arch
        kwargs = arch_kwargs if arch_kwargs is not None else (tagged["kwargs"] if same else {})
    try:
        kwargs = json.loads(json.dumps(dict(kwargs), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"arch_kwargs for {arch!r} must be JSON values: {exc}") from exc
    return {"arch": arch, "kwargs": kwargs}


def _reference(base: dict[str, Any]) -> nn.Module | None:
    """The base architecture built on "meta" (no memory), to tell what pruning changed."""
    try:
        with torch.device("meta"):
            return build_model(base["arch"], **base["kwargs"])
    except Exception:  # a base that cannot be built on "meta": load() still checks every tensor
        return None


def _sizes_beyond_records(model: nn.Module, reference: nn.Module | None, records: dict[str, Any]) -> dict[str, Any]:
    """{module.attribute: value} for int and int-list attributes that differ from the base and no
    width record holds (the split sizes and slice bounds surgery rewrote); load sets them."""
    if reference is None:
        return {}
    ref_modules = dict(reference.named_modules(remove_duplicate=False))
    found: dict[str, Any] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        ref = ref_modules.get(name)
        if ref is None:
            continue
        recorded = set(records.get(name, {}))
        for attr, value in vars(module).items():
            if attr.startswith("_") or attr == "training" or attr in recorded or not _is_size(value):
                continue
            if vars(ref).get(attr, value) != value:
                found[f"{name}.{attr}" if name else attr] = list(value) if isinstance(value, tuple) else value
    return found


def _is_size(value: Any) -> bool:
    return type(value) is int or (isinstance(value, (list, tuple)) and bool(value) and all(type(v) is int for v in value))


def _resized_beyond_records(model: nn.Module, reference: nn.Module | None, base: dict[str, Any],
                            records: dict[str, Any]) -> dict[str, list[int]]:
    """Tensors outside recorded layers whose shape differs from the base ({name: shape}: load
    resizes them); fails at save time, not load time, for a tensor the base does not have."""
    if reference is None:
        return {}
    ref_modules = dict(reference.named_modules(remove_duplicate=False))
    resized: dict[str, list[int]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        ref = ref_modules.get(name)
        if name in records:
            if ref is None:
                raise ValueError(f"cannot save: module {name!r} is not in base architecture {base['arch']!r}")
            continue
        own = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
        if not own:
            continue
        ref_own = {} if ref is None else {
            **dict(ref.named_parameters(recurse=False)), **dict(ref.named_buffers(recurse=False))
        }
        for tensor_name, tensor in own.items():
            ref_tensor = ref_own.get(tensor_name)
            if ref_tensor is None or ref_tensor.dim() != tensor.dim():
                ref_shape = None if ref_tensor is None else tuple(ref_tensor.shape)
                raise ValueError(
                    f"cannot save {type(module).__name__} {name!r}: {tensor_name} has shape "
                    f"{tuple(tensor.shape)} but base {base['arch']!r} has {ref_shape}; a tensor may change "
                    "its size (pruning), not appear or change its number of dims"
                )
            if ref_tensor.shape != tensor.shape:
                resized[f"{name}.{tensor_name}" if name else tensor_name] = list(tensor.shape)
    return resized


def _flat_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors safetensors accepts (own contiguous storage), plus {tied name: kept name} for shared ones."""
    kept: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    first_of: dict[tuple, str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.numel() > 0:
            key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                   tuple(tensor.shape), tensor.stride(), tensor.dtype)
            if key in first_of:
                tied[name] = first_of[key]
                continue
            first_of[key] = name
        kept[name] = tensor
    storage_users: dict[tuple, int] = {}
    for tensor in kept.values():
        if tensor.numel() > 0:
            skey = (tensor.device, tensor.untyped_storage().data_ptr())
            storage_users[skey] = storage_users.get(skey, 0) + 1
    out: dict[str, torch.Tensor] = {}
    for name, tensor in kept.items():
        shared = tensor.numel() > 0 and storage_users[(tensor.device, tensor.untyped_storage().data_ptr())] > 1
        if shared or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        out[name] = tensor.cpu()
    return out, tied


def _write_model(directory: Path, spec_text: str, tensors: dict[str, torch.Tensor], save_id: str) -> None:
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"cannot save a model to {directory}: it is a file")
    directory.parent.mkdir(parents=True, exist_ok=True)
    has_other_files = directory.exists() and any(p.name not in MODEL_FILES for p in directory.iterdir())
    if has_other_files:
        _replace_files_in(directory, spec_text, tensors, save_id)
    else:
        _swap_directory(directory, spec_text, tensors, save_id)


def _swap_directory(directory: Path, spec_text: str, tensors: dict[str, torch.Tensor], save_id: str) -> None:
    """Write a sibling temp dir, then rename it into place (the old model moves aside, then goes)."""
    parent = directory.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.saving-", dir=parent))
    try:
        _write_weights(tmp / WEIGHTS_FILE, tensors, save_id)
        _write_text(tmp / SPEC_FILE, spec_text)
        if directory.exists():
            old = parent / f".{directory.name}.old-{save_id}"
            os.rename(directory, old)
            try:
                os.rename(tmp, directory)
            except BaseException:
                os.rename(old, directory)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
        _fsync_dir(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_files_in(directory: Path, spec_text: str, tensors: dict[str, torch.Tensor], save_id: str) -> None:
    """Directory holds other files too: replace the two model files; the save_id ties them together."""
    weights_tmp = directory / f".{WEIGHTS_FILE}.{save_id}.tmp"
    spec_tmp = directory / f".{SPEC_FILE}.{save_id}.tmp"
    try:
        _write_weights(weights_tmp, tensors, save_id)
        _write_text(spec_tmp, spec_text)
        os.replace(weights_tmp, directory / WEIGHTS_FILE)
        os.replace(spec_tmp, directory / SPEC_FILE)
        _fsync_dir(directory)
    finally:
        for leftover in (weights_tmp, spec_tmp):
            leftover.unlink(missing_ok=True)


def _write_weights(path: Path, tensors: dict[str, torch.Tensor], save_id: str) -> None:
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt", _SAVE_ID_KEY: save_id})
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- load -------------------------------------------------------------------------------------
def load_spec(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated contents of model.json (cheap: the weights are not read)."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {directory} is not a saved prune_explorer model")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    _validate_spec(spec, path)
    return spec


def load(directory: str | os.PathLike, *, trust_code: Any = None) -> nn.Module:
    """Rebuild the saved model (base architecture, narrowed layers, weights) in eval mode.

    A torchvision base is always rebuilt; a "package.module:Class" base only when it is registered
    (`prune_explorer.register_model`) or its module is in `trust_code` (e.g. ["mypkg"]): loading a
    directory from someone else never imports or runs code its model.json names (`trust.py`).
    """
    directory = Path(directory)
    spec = load_spec(directory)
    spec_path = directory / SPEC_FILE
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: missing; model.json has no weights beside it")
    arch, kwargs = spec["base"]["arch"], spec["base"]["kwargs"]
    try:
        model = build_from_spec(spec["base"], trust_code=trust_code, where=f"{spec_path}: field 'base.arch'")
    except UntrustedCode:
        raise
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{spec_path}: field 'base' ({arch!r}, {kwargs}) cannot be built: {exc}") from exc
    _narrow_layers(model, spec["modules"], spec_path)
    _set_sizes(model, spec.get("sizes", {}), spec_path)
    state = _read_weights(weights_path, spec)
    for tied_name, source in spec["tied"].items():
        if source not in state:
            raise ValueError(f"{spec_path}: field 'tied.{tied_name}' points to {source!r}, absent from {weights_path}")
        state[tied_name] = state[source]
    _check_widths(model, state, spec["modules"], weights_path)
    _resize_tensors(model, state, set(spec["modules"]), set(spec.get("resized", {})))
    _check_tensors(model, state, weights_path)
    _match_dtype(model, state)
    model.load_state_dict(state, strict=True)
    model.eval()
    tag_base(model, arch, kwargs)
    setattr(model, METADATA_ATTR, spec["metadata"])
    return model


def _validate_spec(spec: Any, path: Path) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(spec).__name__}")
    if spec.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' is {spec.get('format')!r}, expected {FORMAT!r}")
    version = spec.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path}: field 'format_version' is {version!r}, expected an integer >= 1")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: field 'format_version' is {version}, newer than this prune_explorer reads "
            f"({FORMAT_VERSION}); upgrade prune_explorer"
        )
    _expect(spec, "save_id", str, path)
    base = _expect(spec, "base", dict, path)
    _expect(base, "arch", str, path, "base.")
    _expect(base, "kwargs", dict, path, "base.")
    modules = _expect(spec, "modules", dict, path)
    for name, record in modules.items():
        field = f"modules.{name}"
        if not isinstance(record, dict):
            raise ValueError(f"{path}: field {field!r} must be an object")
        key = "kind" if version >= 2 else "type"
        kind = record.get(key)
        known = sorted(k.name for k in recorded_kinds()) if version >= 2 else sorted(_V1_TYPES)
        if kind not in known:
            hint = " (a kind of your own: register it with register_layer_kind before load)" if version >= 2 else ""
            raise ValueError(f"{path}: field '{field}.{key}' is {kind!r}, expected one of {known}{hint}")
    tied = _expect(spec, "tied", dict, path)
    for name, source in tied.items():
        if not isinstance(source, str):
            raise ValueError(f"{path}: field 'tied.{name}' must be a tensor name (string)")
    _expect(spec, "metadata", dict, path)
    if version >= 2:
        _expect(spec, "resized", dict, path)
    if version >= 4:
        for name, value in _expect(spec, "sizes", dict, path).items():
            if not _is_size(value) or (isinstance(value, list) and any(v < 0 for v in value)):
                raise ValueError(f"{path}: field 'sizes.{name}' is {value!r}, expected an integer or a list of "
                                 "non-negative integers")


def _expect(obj: dict, key: str, kind: type, path: Path, prefix: str = "") -> Any:
    if key not in obj:
        raise ValueError(f"{path}: field '{prefix}{key}' is missing")
    value = obj[key]
    if not isinstance(value, kind):
        raise ValueError(f"{path}: field '{prefix}{key}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def _narrow_layers(model: nn.Module, records: dict[str, dict], spec_path: Path) -> None:
    """Set each recorded module's width attributes in place (the tensors follow in _resize_tensors)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    for name, record in records.items():
        field = f"modules.{name}"
        current = modules.get(name)
        if current is None:
            raise ValueError(f"{spec_path}: field '{field}': the base model has no module {name!r}")
        key = "kind" if "kind" in record else "type"
        expected = record[key] if key == "kind" else _V1_TYPES[record[key]]
        try:
            built = KINDS[expected].from_record(current, record)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{spec_path}: field '{field}' ({expected}): {exc}") from exc
        if built is not None:
            replace_module(model, name, built)
            continue
        kind = recorded_kind(current)
        if kind is None or kind.name != expected:
            raise ValueError(f"{spec_path}: field '{field}.{key}' is {record[key]!r} but the base model's "
                             f"{name!r} is {type(current).__name__}")
        for attr in kind.width_attrs:
            if attr not in record:
                continue
            value = record[attr]
            if isinstance(value, list):
                value = tuple(value)
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0 or (
                isinstance(value, tuple) and all(isinstance(v, int) and v > 0 for v in value))
            if not ok:
                raise ValueError(f"{spec_path}: field '{field}.{attr}' is {record[attr]!r}, expected a positive "
                                 "integer (or a list of them)")
            setattr(current, attr, value)


def _set_sizes(model: nn.Module, sizes: dict[str, Any], spec_path: Path) -> None:
    """Give the rebuilt base the attributes pruning rewrote (a list stays the base's type)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    for key, value in sizes.items():
        name, _, attr = key.rpartition(".")
        module = modules.get(name)
        current = vars(module).get(attr) if module is not None else None
        if module is None or not _is_size(current):
            raise ValueError(f"{spec_path}: field 'sizes.{key}': the base model has no integer attribute {key!r}")
        if isinstance(current, (list, tuple)) != isinstance(value, list):
            raise ValueError(f"{spec_path}: field 'sizes.{key}' is {value!r} but the base model's is {current!r}")
        setattr(module, attr, type(current)(value) if isinstance(current, (list, tuple)) else value)


def _check_widths(model: nn.Module, state: dict[str, torch.Tensor], records: dict[str, dict], path: Path) -> None:
    """Each recorded layer's tensors in the file have the shapes its recorded widths imply."""
    modules = dict(model.named_modules(remove_duplicate=False))
    for name in records:
        module = modules[name]
        for attr, shape in recorded_kind(module).expected_shapes(module).items():
            key = f"{name}.{attr}" if name else attr
            value = state.get(key)
            if value is not None and getattr(module, attr, None) is not None and tuple(value.shape) != shape:
                raise ValueError(f"{path}: tensor {key!r} has shape {tuple(value.shape)} in the file but the "
                                 f"widths model.json gives {name!r} mean {shape}")


def _resize_tensors(model: nn.Module, state: dict[str, torch.Tensor], recorded: set[str], resized: set[str]) -> None:
    """Give recorded layers' tensors and the listed resized tensors the file's shapes (empty, then
    filled by load_state_dict); shared tensors stay shared."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    by_name: dict[str, tuple[nn.Module, str, torch.Tensor]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for attr, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is None:
                continue
            owners.setdefault(id(tensor), []).append((module, attr))
            by_name[f"{mod_name}.{attr}" if mod_name else attr] = (module, attr, tensor)
    replaced: dict[int, torch.Tensor] = {}
    for name, value in state.items():
        found = by_name.get(name)
        if found is None:
            continue
        module, attr, tensor = found
        owner = name.rpartition(".")[0]
        if tuple(tensor.shape) == tuple(value.shape) or (owner not in recorded and name not in resized):
            continue
        if id(tensor) not in replaced:
            fresh = torch.empty(value.shape, dtype=tensor.dtype, device=tensor.device)
            replaced[id(tensor)] = nn.Parameter(fresh, requires_grad=tensor.requires_grad) \
                if isinstance(tensor, nn.Parameter) else fresh
            for other, other_attr in owners[id(tensor)]:
                store = other._parameters if other_attr in other._parameters else other._buffers
                store[other_attr] = replaced[id(tensor)]


def _read_weights(path: Path, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            file_id = (handle.metadata() or {}).get(_SAVE_ID_KEY)
            if file_id != spec["save_id"]:
                raise ValueError(
                    f"{path}: save id {file_id!r} does not match model.json's 'save_id' {spec['save_id']!r}; "
                    "the two files come from different saves (an interrupted save?)"
                )
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except (safetensors.SafetensorError, OSError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc


def _check_tensors(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    problems = [f"missing tensor {name!r} (model expects shape {shape})"
                for name, shape in expected.items() if name not in state]
    problems += [f"unexpected tensor {name!r} (shape {tuple(t.shape)})"
                 for name, t in state.items() if name not in expected]
    problems += [
        f"tensor {name!r} has shape {tuple(t.shape)} in the file but the model from model.json expects {expected[name]}"
        for name, t in state.items() if name in expected and tuple(t.shape) != expected[name]
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{path}: {shown}")


def _match_dtype(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Keep a half/bfloat16 model in its saved dtype (load_state_dict would cast it to float32)."""
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        (dtype,) = float_dtypes
        if dtype != torch.float32:
            model.to(dtype)
