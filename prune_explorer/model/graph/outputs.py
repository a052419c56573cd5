"""Which of a model's outputs must keep their shape and values: `ChannelGraph.trace(..., outputs=)`.

A model output is never prunable: a caller reads its channels. By default every output is kept.
Some outputs are not what a user deploys — ultralytics' YOLO in eval mode also returns its
Detect head's inputs (`feats`, the loss's inputs), which pins the neck's last convs — so a caller
may keep only some: the channels of a selected-away output become prunable like any inner
tensor's, and that output may change shape (and, where its channels are cut, values) in the
pruned model. Everything kept is exact (`model/exactness.py` compares only the kept outputs).

An output is named by its path in the output structure, as `torch.utils._pytree` flattens it: a
tuple or list index, a dict key, a named tuple's or dataclass's field. `outputs=` takes
- a pattern or a list of patterns: keys joined by dots (`"0"`, `"1.boxes"`, `"1.feats"`); `*`
  matches any one key; a pattern keeps its whole subtree; one starting with `!` drops what it
  matches (`"!1.feats"`: everything but the feats). With only `!` patterns, the rest is kept.
- a callable `(path: tuple) -> bool`, path the keys as values (`(1, "feats", 0)`).
A pattern that matches no output, or a selection that keeps none, is a ValueError naming the
outputs there are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from torch.utils._pytree import GetAttrKey, MappingKey, SequenceKey, tree_flatten_with_path

Path = tuple[Any, ...]


class OutputSelectionError(ValueError):
    """The `outputs=` selection does not fit the model's outputs (no route would do better)."""


def leaves(value: Any) -> list[tuple[Path, Any]]:
    """(path, leaf) of every leaf of an output structure, in pytree order."""
    return [(_plain_path(path), leaf) for path, leaf in tree_flatten_with_path(value)[0]]


def path_text(path: Path) -> str:
    return ".".join(str(key) for key in path) or "(the output itself)"


def _plain_path(path: Iterable) -> Path:
    found = []
    for key in path:
        if isinstance(key, SequenceKey):
            found.append(key.idx)
        elif isinstance(key, MappingKey):
            found.append(key.key)
        elif isinstance(key, GetAttrKey):
            found.append(key.name)
        else:
            found.append(str(key))
    return tuple(found)


@dataclass(frozen=True)
class _Pattern:
    keys: tuple[str, ...]
    drop: bool
    text: str

    def matches(self, path: Path) -> bool:
        return len(path) >= len(self.keys) and all(k == "*" or k == str(p) for k, p in zip(self.keys, path))


class OutputSelection:
    """Which output leaves are kept; `spec` is what the caller gave (the graph keeps it as `graph.outputs`)."""

    def __init__(self, spec: Any):
        self.spec = spec
        self._patterns: tuple[_Pattern, ...] = ()
        self._predicate: Callable[[Path], bool] | None = None
        if callable(spec):
            self._predicate = spec
            return
        texts = [spec] if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else None
        if not texts or not all(isinstance(t, str) and t.strip().lstrip("!").strip() for t in texts):
            raise OutputSelectionError(f"outputs={spec!r}: give a path such as '1.boxes', '!1.feats', a list of "
                                       "them, or a callable taking an output's path")
        self._patterns = tuple(_Pattern(tuple(t.strip().lstrip("!").strip().split(".")), t.strip().startswith("!"),
                                        t.strip()) for t in texts)

    def __repr__(self) -> str:
        return f"OutputSelection({self.spec!r})"

    def __call__(self, path: Path) -> bool:
        if self._predicate is not None:
            return bool(self._predicate(tuple(path)))
        keep = [p for p in self._patterns if not p.drop]
        kept = any(p.matches(path) for p in keep) if keep else True
        return kept and not any(p.matches(path) for p in self._patterns if p.drop)

    def check(self, paths: Sequence[Path]) -> None:
        """Every pattern names an output and at least one output is kept; else a ValueError listing them."""
        shown = ", ".join(path_text(p) for p in paths)
        for pattern in self._patterns:
            if not any(pattern.matches(p) for p in paths):
                raise OutputSelectionError(f"outputs: {pattern.text!r} matches none of the model's outputs ({shown})")
        if paths and not any(self(p) for p in paths):
            raise OutputSelectionError(f"outputs={self.spec!r} keeps none of the model's outputs ({shown})")

    def kept(self, value: Any) -> list[tuple[Path, Any]]:
        """The kept (path, leaf) pairs of a real output."""
        return [(path, leaf) for path, leaf in leaves(value) if self(path)]


def selection(spec: Any) -> OutputSelection | None:
    """None (every output kept) or the selection `spec` describes; an OutputSelection passes through."""
    if spec is None or isinstance(spec, OutputSelection):
        return spec
    return OutputSelection(spec)


def output_nodes(node: Any, traced: Any) -> list[tuple[Path | None, Any]]:
    """(path, value) of every leaf of a traced graph's output node: the recorded and exported
    graphs list their outputs flat beside `traced.output_paths`; fx's holds the structure itself."""
    if traced.output_paths is not None:
        values = node.args[0] if len(node.args) == 1 and isinstance(node.args[0], (list, tuple)) else node.args
        return list(zip(traced.output_paths, values))
    return leaves(node.args[0] if len(node.args) == 1 else node.args)


def kept_outputs(value: Any, spec: Any) -> Any:
    """The leaves of a real output that `spec` keeps, as {path: leaf} (the whole output when spec is None)."""
    chosen = selection(spec)
    return value if chosen is None else dict(chosen.kept(value))
