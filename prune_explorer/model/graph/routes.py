"""Which route understands a model — fx, a recorded forward, torch.export — always on a private copy.

Every route works on a copy made before anything is traced (`clone.private_copy`), so the user's
parameters, buffers, plain attributes (a detection head's cached `anchors`), hooks and outputs
stay as they were, whichever route succeeds or refuses. Order, measured (BENCHMARKS.md, "Trace
routes"): fx (≈ 10–40 ms, symbolic: it refuses any Python control flow on tensors, so an fx
graph holds for every input); a recorded forward (`recording.py`: one real forward, any model
that runs); torch.export (when a real forward cannot run, e.g. example inputs on the meta
device). The recorded and exported graphs describe the example input's path only, so that path
is checked: recorded (exported) again with another input — other spatial sizes, other values —
and if the ops that carry channels differ, an `InputDependentPath` warning names the first op
that differs and its module.

Example inputs follow the package's convention (`model/inputs.py`): a tuple is the positional
arguments, a dict the keyword arguments, anything else — a tensor, a list of images (torchvision
detectors) — is the one argument.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.node import map_aggregate
from torch.utils._pytree import tree_flatten, tree_map

from ..clone import private_copy
from ..inputs import split_inputs
from .analysis import Analysis
from .channels import Layout
from .outputs import OutputSelection, OutputSelectionError
from .recording import record
from .tracing import _scopes, run_fx, trace_export, trace_fx

ROUTES = ("fx", "record", "export")


class InputDependentPath(UserWarning):
    """The recorded (or exported) path differs for another input: the graph holds for the example's path only."""


def analyse(model: nn.Module, example_inputs: Any, leaf_modules: tuple[type, ...] = (),
            route: str | None = None, outputs: OutputSelection | None = None) -> Analysis:
    """The walked graph from the first route that understands `model` (or only `route`); `outputs`:
    which outputs keep their channels (`outputs.py`; None: all)."""
    if route is not None and route not in ROUTES:
        raise ValueError(f"unknown trace route {route!r}: choose one of {', '.join(ROUTES)}")
    args, kwargs = split_inputs(example_inputs)
    errors: dict[str, BaseException] = {}
    for name in ROUTES if route is None else (route,):
        try:
            analysis = _ROUTES[name](model, args, kwargs, tuple(leaf_modules), outputs)
        except OutputSelectionError:
            raise                # the selection does not fit the outputs: no other route would do better
        except Exception as err:  # noqa: BLE001 - each route raises its own kinds; the next may understand
            errors[name] = err
            continue
        analysis.finish()
        return analysis
    said = "; ".join(f"{_ROUTE_NAMES[name]} says {_first_line(err)}" for name, err in errors.items())
    raise ValueError(f"cannot trace {type(model).__name__}: {said}. Pass the offending module types as "
                     "leaf_modules=(...)") from errors[next(reversed(errors))]


def _fx(model: nn.Module, args: tuple, kwargs: dict, leaf_types: tuple[type, ...],
        outputs: OutputSelection | None) -> Analysis:
    copy = private_copy(model, share_tensors=True)
    if kwargs:                   # fx's graph takes every argument by position
        bound = inspect.signature(copy.forward).bind(*args, **kwargs)
        bound.apply_defaults()
        args = bound.args
    traced, constants = trace_fx(copy, leaf_types)
    analysis = Analysis(copy, traced, outputs)
    analysis.fx_leaves = leaf_types          # `sizes.answer` traces again with the same leaves
    run_fx(copy, traced, constants, args, analysis.visit)
    return analysis


def _recorded(model: nn.Module, args: tuple, kwargs: dict, leaf_types: tuple[type, ...],
              outputs: OutputSelection | None) -> Analysis:
    copy = private_copy(model, share_tensors=False)
    recorded = record(copy, args, kwargs, leaf_types)
    analysis = _walk(copy, recorded.traced, outputs)
    checked = _check_path(analysis, model, args, kwargs, lambda m, a, k: record(m, a, k, leaf_types).traced,
                          "recorded")
    if not checked and recorded.value_reads:
        warnings.warn(f"the recorded forward read tensor values into Python ({recorded.value_reads[0]}; "
                      f"{len(recorded.value_reads)} in all) and ran on no other input to check the path it took; "
                      "the channel graph holds for the example input's path only", InputDependentPath, stacklevel=4)
    return analysis


def _exported(model: nn.Module, args: tuple, kwargs: dict, leaf_types: tuple[type, ...],
              outputs: OutputSelection | None) -> Analysis:
    copy = private_copy(model, share_tensors=True)
    analysis = _walk(copy, trace_export(copy, args, kwargs), outputs)
    _check_path(analysis, model, args, kwargs, trace_export, "exported")
    return analysis


_ROUTES: dict[str, Callable[..., Analysis]] = {"fx": _fx, "record": _recorded, "export": _exported}
_ROUTE_NAMES = {"fx": "torch.fx", "record": "a recorded forward", "export": "torch.export"}


def _walk(model: nn.Module, traced, outputs: OutputSelection | None = None) -> Analysis:
    analysis = Analysis(model, traced, outputs)
    for node in traced.graph.nodes:
        analysis.visit(node, node.meta.get("val"))
    return analysis


# --- is the path the example took the path every input takes? ----------------------------------------
def _check_path(analysis: Analysis, model: nn.Module, args: tuple, kwargs: dict, trace: Callable, how: str) -> bool:
    """Trace again with another input (other sizes and values, else other values) on a fresh copy;
    warn when the ops that carry channels differ. A model that cannot run on the other input is
    not checked there; False when it ran on none."""
    for other, what in _other_inputs(args, kwargs):
        copy = private_copy(model, share_tensors=how == "exported")
        try:
            again = _walk(copy, trace(copy, *other))
        except Exception:  # noqa: BLE001 - the model does not take this input: try the next, else no check
            continue
        again.finish()
        differs = _first_difference(channel_ops(analysis), channel_ops(again))
        if differs is not None:
            warnings.warn(f"the {how} path depends on the input (tried {what}): {differs}; the channel graph "
                          "holds for the example input's path only, so prune with inputs that take that path",
                          InputDependentPath, stacklevel=5)
        return True
    return False


def _other_inputs(args: tuple, kwargs: dict):
    """Inputs to check the path with: images (the last two dims of 3-d and 4-d+ float tensors) of
    another size and aspect ratio (a detector's transform resizes the image to fit its limits: a
    square one would come out as before) with new values; then new values alone."""
    gen = torch.Generator().manual_seed(1)
    if any(_spatial(t) for t in _tensors((args, kwargs))):
        yield tree_map(lambda t: _redrawn(t, gen, resize=True) if isinstance(t, torch.Tensor) else t,
                       (args, kwargs)), "an input of another size and other values"
    yield tree_map(lambda t: _redrawn(t, gen, resize=False) if isinstance(t, torch.Tensor) else t,
                   (args, kwargs)), "an input of other values"


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _spatial(t: torch.Tensor) -> tuple[int, ...]:
    return (t.dim() - 2, t.dim() - 1) if t.dim() >= 3 and t.is_floating_point() else ()


def _redrawn(t: torch.Tensor, gen: torch.Generator, resize: bool) -> torch.Tensor:
    """Uniform values in the tensor's own range; with `resize`, height + 1/4 and width x 2 (+ 32 and
    x 2 for multiples of 32, which strided networks need)."""
    if not t.is_floating_point() or t.device.type == "meta":
        return t
    shape = list(t.shape)
    if resize and _spatial(t):
        h, w = _spatial(t)
        shape[h] += 32 if shape[h] % 32 == 0 else max(shape[h] // 4, 4)
        shape[w] *= 2
    lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 1.0, lo + 1.0
    return (torch.rand(shape, generator=gen, dtype=t.dtype) * (hi - lo) + lo).to(t.device)


def channel_ops(analysis: Analysis) -> list[tuple[str, str, tuple]]:
    """(op, module, channel widths) of every op whose input or result carries channels, in order."""
    made = _produced(analysis)
    found = []
    for node in analysis.traced.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        widths = tuple(_widths(analysis.layout.get(a), made) for a in _arg_nodes(node))
        out = _widths(analysis.layout.get(node), made)
        if not any(widths) and not out:
            continue
        found.append((_label(node), _innermost(node), widths + (out,)))
    return found


def _arg_nodes(node) -> list:
    found: list = []
    map_aggregate((node.args, node.kwargs), lambda a: found.append(a) if isinstance(a, torch.fx.Node) else None)
    return found


def _produced(analysis: Analysis) -> np.ndarray:
    """Per channel id: made by a layer (not the model input, whose "channels" may be an image's rows)."""
    made = np.zeros(analysis.channels.total, dtype=bool)
    for atom in analysis.channels.atoms:
        made[atom.start:atom.start + atom.size] = atom.producer is not None
    return made


def _widths(layout: Any, made: np.ndarray) -> tuple[int, ...]:
    if isinstance(layout, Layout):
        return (int(layout.ids.size),) if made[layout.ids.reshape(-1)].any() else ()
    if isinstance(layout, tuple):
        return tuple(w for part in layout for w in _widths(part, made))
    return ()


def _label(node) -> str:
    if node.op == "call_module":
        return f"module call {node.target}"
    if node.op == "call_method":
        return f"{node.target}"
    target = node.target
    return getattr(target, "__name__", None) or str(target)


def _innermost(node) -> str:
    scopes = list(_scopes(node).values())
    return scopes[-1][0] if scopes else ""


def _first_difference(a: list, b: list) -> str | None:
    for x, y in zip(a, b):
        if x != y:
            return f"{_say(x)} for the example but {_say(y)} for the other input"
    if len(a) != len(b):
        longer, which = (a, "the example") if len(a) > len(b) else (b, "the other input")
        return f"{_say(longer[min(len(a), len(b))])} runs only for {which}"
    return None


def _say(op: tuple) -> str:
    label, module, widths = op
    where = f"module {module}" if module else "the model's forward"
    shown = ", ".join("-" if not w else "x".join(map(str, w)) for w in widths)
    return f"{label} in {where} (channels {shown})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
