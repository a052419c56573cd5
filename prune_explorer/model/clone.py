"""A copy of a module tree as `copy.deepcopy` makes it, without its per-object Python cost.

`prune` must return a new model and leave its input alone, so it copies the model once; on
resnet18 `copy.deepcopy` of the module tree spent ≈ 20 ms in Python on objects it could copy
without looking (ints, tuples, strings, empty hook dicts). `clone` builds each module with
`cls.__new__` and a fresh `__dict__`: tensors come from the caller's memo (sliced or cloned
once), child modules are cloned the same way, and plain data (atomic values; tuples, lists,
dicts and sets of plain data; hook dicts of plain functions) is copied structurally, which for
such values is what deepcopy does. Anything else — a module with its own pickling or copy
methods (`GraphModule`), `__slots__`, a tensor attribute not in the memo, a hook that is a bound
method or a partial, any other object — is handed to `copy.deepcopy` with the same memo, so
deepcopy decides exactly as before and objects shared between modules stay shared.
"""
from __future__ import annotations

import copy
import enum
import types
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

_ATOMIC = (type(None), bool, int, float, complex, str, bytes, range, slice, type, enum.Enum, torch.dtype,
           torch.device, torch.layout, torch.memory_format, types.FunctionType, types.BuiltinFunctionType)
_CONTAINERS = (tuple, torch.Size, list, dict, OrderedDict, set, frozenset)


class _NotPlain(Exception):
    """A value `clone` leaves to `copy.deepcopy`."""


def clone(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """`copy.deepcopy(module, memo)`, faster where the tree is made of plain modules."""
    found = memo.get(id(module))
    if found is not None:
        return found
    cls = type(module)
    if not _copies_plainly(cls):
        return copy.deepcopy(module, memo)
    children = {name: None if child is None else clone(child, memo) for name, child in module._modules.items()}
    try:
        state = {}
        for key, value in module.__dict__.items():
            if key == "_modules":
                state[key] = children
            elif key in ("_parameters", "_buffers"):
                state[key] = type(value)((name, _tensor(t, memo)) for name, t in value.items())
            else:
                state[key] = _plain(value, memo)
    except _NotPlain:
        return copy.deepcopy(module, memo)   # children are in the memo already: deepcopy reuses them
    new = cls.__new__(cls)
    new.__dict__.update(state)
    memo[id(module)] = new
    return new


def _copies_plainly(cls: type) -> bool:
    """Its copy is nn.Module's: no copy or pickling methods of its own, a plain `__dict__`. A
    `__setstate__` of torch.nn's own (conv, MultiheadAttention: they fill in attributes missing
    from old pickles) changes nothing on a complete `__dict__`, so it does not count."""
    found = _PLAIN.get(cls)
    if found is None:
        setstate = cls.__setstate__
        found = _PLAIN[cls] = (
            cls.__getstate__ is nn.Module.__getstate__
            and (setstate is nn.Module.__setstate__ or setstate.__module__.startswith("torch.nn."))
            and not hasattr(cls, "__deepcopy__") and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__ and not any("__slots__" in vars(c) for c in cls.__mro__[:-1]))
    return found


_PLAIN: dict[type, bool] = {}


def _tensor(t: Any, memo: dict[int, Any]) -> Any:
    if t is None:
        return None
    found = memo.get(id(t))
    if found is None:
        raise _NotPlain
    return found


_ATOMIC_TYPES = frozenset(_ATOMIC)


def _plain(value: Any, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in _ATOMIC_TYPES or isinstance(value, _ATOMIC):
        return value
    if kind not in _CONTAINERS:
        raise _NotPlain
    found = memo.get(id(value))
    if found is not None:
        return found
    if not value:
        new = kind()                       # the many empty hook dicts
        memo[id(value)] = new
        return new
    if kind not in (dict, OrderedDict):
        new = kind(_plain(v, memo) for v in value)
    else:
        new = kind((_plain(k, memo), _plain(v, memo)) for k, v in value.items())
    memo[id(value)] = new
    return new


# --- a private copy for analysis ------------------------------------------------------------------
_HOOK_DICTS = frozenset(("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks"))


_NOT_IN_FORWARD = frozenset(("_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                             "_load_state_dict_post_hooks", "_non_persistent_buffers_set"))


def private_copy(module: nn.Module, *, share_tensors: bool) -> nn.Module:
    """A copy of the module tree that tracing may change at will: the user's model stays as it was.

    Every module is a new object with its own `__dict__`, so what a forward assigns (a detection
    head's cached `anchors`, `self.shape`; fx's Proxies, torch.export's FakeTensors) lands on the
    copy. Parameters and buffers are the user's own objects when `share_tensors` (fx and
    torch.export never compute on them), else clones (a real forward may update buffers in place:
    batch norm in training mode). Tensors kept in plain attributes are always cloned; containers
    are copied; other objects go to `copy.deepcopy` with the same memo (shared as they are when
    they cannot be copied). Hooks are left behind: analysis never runs the user's hooks (fx never
    did), so a hook that records activations sees no trace.
    """
    memo: dict[int, Any] = {}
    for mod in module.modules():
        for tensors in (mod._parameters, mod._buffers):
            for t in tensors.values():
                if t is not None and id(t) not in memo:
                    memo[id(t)] = t if share_tensors else _as_own(t)
    return _private(module, memo)


def _as_own(t: torch.Tensor) -> torch.Tensor:
    value = t.detach().clone()
    return nn.Parameter(value, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else value


def _private(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    found = memo.get(id(module))
    if found is not None:
        return found
    cls = type(module)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state = {}
    for key, value in module.__dict__.items():
        kind = type(value)
        if kind in _ATOMIC_TYPES or (kind is tuple and all(type(v) in _ATOMIC_TYPES for v in value)):
            state[key] = value                     # immutable: shared, as deepcopy shares it
        elif key in _HOOK_DICTS:
            state[key] = type(value)()
        elif key in _NOT_IN_FORWARD:
            state[key] = value                     # state-dict hooks: no forward reads or writes them
        elif key == "_modules":
            state[key] = {name: None if child is None else _private(child, memo) for name, child in value.items()}
        elif key in ("_parameters", "_buffers"):
            state[key] = {name: None if t is None else memo[id(t)] for name, t in value.items()}
        else:
            state[key] = _private_value(value, memo)
    new.__dict__.update(state)
    for slot in _slots(cls):
        if hasattr(module, slot):
            setattr(new, slot, _private_value(getattr(module, slot), memo))
    return new


def _slots(cls: type) -> tuple[str, ...]:
    found = _SLOTS.get(cls)
    if found is None:
        found = _SLOTS[cls] = tuple(s for c in cls.__mro__ for s in vars(c).get("__slots__", ())
                                    if s not in ("__dict__", "__weakref__"))
    return found


_SLOTS: dict[type, tuple[str, ...]] = {}


def _private_value(value: Any, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in _ATOMIC_TYPES or isinstance(value, _ATOMIC):
        return value
    found = memo.get(id(value))
    if found is not None:
        return found
    if isinstance(value, torch.Tensor):
        new = _as_own(value)
    elif isinstance(value, nn.Module):
        new = _private(value, memo)
    elif kind in (list, dict, OrderedDict, set, frozenset, tuple):
        new = (kind((_private_value(k, memo), _private_value(v, memo)) for k, v in value.items())
               if kind in (dict, OrderedDict) else kind(_private_value(v, memo) for v in value))
    else:
        try:
            new = copy.deepcopy(value, memo)
        except Exception:  # noqa: BLE001 - a lock, a file, a generator: shared as it is
            new = value
    memo[id(value)] = new
    return new
