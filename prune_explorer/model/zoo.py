"""Build a model by name and remember how it was built, so a pruned copy can be rebuilt from disk.

`build_model` tags every model it returns with `BASE_ATTR` ({"arch", "kwargs"}); `store.save`
reads the tag to know which base to rebuild before narrowing layers again. `build_from_spec`
rebuilds from such a spec read from a file, through the trust gate (`trust.py`): a file's
"package.module:Class" is imported only when the user trusts that module.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .trust import registered, user_constructor

BASE_ATTR = "prune_explorer_base"

_STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def build_model(arch: str, *, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A fresh model: a torchvision architecture by name, or a user class "package.module:ClassName".

    `weights` is optional: a local state-dict file (.pth/.pt/.bin via `torch.load(weights_only=True)`,
    or .safetensors), or a torchvision weights enum name such as "IMAGENET1K_V1" (downloaded by
    torchvision; needs internet). Keyword arguments go to the constructor and are recorded, so they
    must be JSON values. `arch` is the caller's own choice, so its module is imported; it must name
    an nn.Module subclass (or a classmethod of one), checked before it is called. A name read from a
    file goes through `build_from_spec` instead.
    """
    return _build(arch, weights, kwargs, trust_code=None, where=f"build_model({arch!r})", caller_named=True)


def build_from_spec(spec: dict[str, Any], *, trust_code: Any = None, where: str,
                    weights: str | Path | None = None) -> nn.Module:
    """Rebuild the model a spec read from a file names ({"arch", "kwargs"}: model.json's `base`, a
    trial's `model`, a job's --model): torchvision names always; "package.module:Class" only from
    the registry or a module in `trust_code` (`trust.user_constructor`). `where` names the field
    for errors, e.g. "DIR/model.json: field 'base.arch'"."""
    return _build(spec["arch"], weights, dict(spec.get("kwargs") or {}), trust_code=trust_code, where=where)


def _build(arch: str, weights: str | Path | None, kwargs: dict[str, Any], *, trust_code: Any, where: str,
           caller_named: bool = False) -> nn.Module:
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be a non-empty string, got {arch!r}")
    _check_json_kwargs(arch, kwargs)
    weights_path = _local_weights_path(weights)
    enum_weights = None if weights is None or weights_path is not None else str(weights)
    if ":" in arch or registered(arch) is not None:
        if enum_weights is not None:
            raise ValueError(
                f"weights={weights!r} is neither an existing file nor usable with user model {arch!r}: "
                "pass a local state-dict path (.pth/.pt/.bin/.safetensors)"
            )
        constructor = user_constructor(arch, trust_code=trust_code, where=where, caller_named=caller_named)
        model = constructor(**kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"user model {arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    else:
        model = _build_torchvision_model(arch, enum_weights, kwargs)
    if weights_path is not None:
        _load_local_weights(model, weights_path)
    tag_base(model, arch, kwargs)
    return model


def tag_base(model: nn.Module, arch: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Record the spec `model` can be rebuilt from (a plain dict attribute: survives deepcopy)."""
    setattr(model, BASE_ATTR, {"arch": arch, "kwargs": dict(kwargs or {})})
    return model


def base_spec(model: nn.Module) -> dict[str, Any] | None:
    """The {"arch", "kwargs"} tag set by `build_model`, or None for an untagged model."""
    spec = getattr(model, BASE_ATTR, None)
    if spec is None:
        return None
    return {"arch": spec["arch"], "kwargs": dict(spec.get("kwargs") or {})}


def _check_json_kwargs(arch: str, kwargs: dict[str, Any]) -> None:
    for key, value in kwargs.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"build_model({arch!r}): keyword {key!r}={value!r} is not a JSON value, "
                "so the model could not be rebuilt from disk"
            ) from exc


def _build_torchvision_model(arch: str, weights: str | None, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(
            f"unknown architecture {arch!r}: not a torchvision model name and not "
            f"'package.module:ClassName'{hint}"
        )
    return torchvision.models.get_model(arch, weights=weights, **kwargs)


def _local_weights_path(weights: str | Path | None) -> Path | None:
    if weights is None:
        return None
    path = Path(weights)
    if path.suffix in _STATE_DICT_SUFFIXES or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return path
    return None


def _load_local_weights(model: nn.Module, path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the model: {exc}") from exc


# --- the classification head (a pretrained start on a new task) -----------------------------
def classifier_head(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The last Linear layer (in module order) and its name: the head a new task replaces."""
    found = next(((n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), None)
    return found


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the last Linear layer for a fresh one with `num_classes` outputs (pretrained weights, new task).

    The features keep their weights; the new head starts from PyTorch's default initialisation.
    Returns the replaced layer's name.
    """
    found = classifier_head(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no Linear layer to replace as its classification head")
    name, old = found
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return name


def output_size(model: nn.Module, example_inputs: torch.Tensor | None = None) -> int | None:
    """Number of outputs: from one eval-mode forward pass on `example_inputs`, else the head's out_features."""
    if example_inputs is None:
        found = classifier_head(model)
        return None if found is None else found[1].out_features
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example_inputs)
    finally:
        model.train(was_training)
    return int(out.shape[-1])
