"""Channel bookkeeping: every channel a producer creates gets an id; tensors carry ids per position.

A `Layout` says which tensor axis carries channels and which channel id sits at each position
along it (concatenation appends, a channel shuffle permutes, a flatten multiplies by `factor`).
Operations that force channels to be removed together add *couplings* (id arrays that must
match position by position); the groups and their channel indices are the connected components
of those couplings, computed once at the end (`Channels.components`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True, eq=False)
class Layout:
    """Channel ids along the channel axes of one tensor.

    `axes` is one axis, or two adjacent axes while a view has split the channel axis (the first
    half of a channel shuffle); `ids` has one dim per axis. `factor`: elements per channel along a
    single axis after a flatten folded the spatial dims into it.
    """

    axes: tuple[int, ...]
    ids: np.ndarray
    factor: int = 1

    @property
    def axis(self) -> int:
        return self.axes[0]

    @property
    def width(self) -> int:
        """Positions along the (single) channel axis."""
        return int(self.ids.size) * self.factor

    def moved(self, axes: tuple[int, ...], ids: np.ndarray | None = None, factor: int | None = None) -> "Layout":
        return Layout(tuple(axes), self.ids if ids is None else ids, self.factor if factor is None else factor)


class _Opaque:
    """A tensor whose channels the graph cannot relate to channel groups."""

    def __repr__(self) -> str:
        return "OPAQUE"


OPAQUE = _Opaque()


@dataclass
class Atom:
    """The channels one producer (or the model input) creates."""

    start: int
    size: int
    producer: str | None


@dataclass
class Channels:
    """Channel ids, their couplings, and what is known about each (refusals, output, residual)."""

    atoms: list[Atom] = field(default_factory=list)
    total: int = 0
    _left: list[np.ndarray] = field(default_factory=list)
    _right: list[np.ndarray] = field(default_factory=list)
    reasons: list[tuple[np.ndarray, str]] = field(default_factory=list)
    output: list[np.ndarray] = field(default_factory=list)
    residual: list[np.ndarray] = field(default_factory=list)
    balanced: list[tuple[np.ndarray, int, str]] = field(default_factory=list)
    equal_parts: list[list[np.ndarray]] = field(default_factory=list)
    keep: list[tuple[np.ndarray, str]] = field(default_factory=list)   # parts that must keep a channel

    def new(self, size: int, producer: str | None = None, reason: str | None = None) -> np.ndarray:
        ids = np.arange(self.total, self.total + size, dtype=np.int64)
        self.atoms.append(Atom(self.total, size, producer))
        self.total += size
        if reason:
            self.reasons.append((ids, reason))
        return ids

    def couple(self, a: np.ndarray, b: np.ndarray) -> None:
        """Channels a[i] and b[i] must be removed together."""
        a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
        if a.shape != b.shape:
            raise AssertionError("couple() needs id arrays of one shape")
        differ = a != b
        if differ.any():
            self._left.append(a[differ])
            self._right.append(b[differ])

    def refuse(self, layout, reason: str) -> None:
        if isinstance(layout, Layout):
            self.reasons.append((layout.ids.reshape(-1), reason))

    def balance(self, ids: np.ndarray, blocks: int, rule: str) -> None:
        """`ids` split into `blocks` equal runs must lose the same number of channels from each."""
        self.balanced.append((np.asarray(ids).reshape(-1), blocks, rule))

    def keep_one(self, ids: np.ndarray, label: str) -> None:
        """At least one of these positions must stay (a part of a split or a slice the code names)."""
        self.keep.append((np.asarray(ids).reshape(-1), label))

    def atom_of(self, ids: np.ndarray) -> np.ndarray:
        starts = np.fromiter((a.start for a in self.atoms), dtype=np.int64, count=len(self.atoms))
        return np.searchsorted(starts, ids, side="right") - 1

    def split_evenly(self, pieces: list[np.ndarray]) -> None:
        """A tensor chunked into equal parts: a pruned model chunks its pruned width equally again,
        so every part must lose as many positions as the others."""
        self.equal_parts.append([np.asarray(p).reshape(-1) for p in pieces])

    def components(self) -> np.ndarray:
        """Component label per channel id: channels with one label are removed together.

        Equal parts: a channel class may sit more often in one part than in another (after a
        shuffle); classes are merged until each class removes as many positions from every part
        (equal weights first, then what is left over), repeated until all parts balance.
        """
        while True:
            labels = self._connected()
            if not self._balance_parts(labels):
                return labels

    def _connected(self) -> np.ndarray:
        if not self._left:
            return np.arange(self.total, dtype=np.int64)
        left, right = np.concatenate(self._left), np.concatenate(self._right)
        matrix = coo_matrix((np.ones(left.size, dtype=np.int8), (left, right)), shape=(self.total, self.total))
        _, labels = connected_components(matrix, directed=False)
        return labels.astype(np.int64)

    def _balance_parts(self, labels: np.ndarray) -> bool:
        """Couple classes so that each removes the same number of positions from every part; True
        if anything was coupled."""
        if not self.equal_parts:
            return False
        first_id = np.full(labels.max() + 1, -1, dtype=np.int64)
        first_id[labels[::-1]] = np.arange(labels.size - 1, -1, -1)
        coupled = False
        for pieces in self.equal_parts:
            base = np.bincount(labels[pieces[0]], minlength=first_id.size)
            for other in pieces[1:]:
                weight = base - np.bincount(labels[other], minlength=first_id.size)
                classes = np.flatnonzero(weight)
                if not classes.size:
                    continue
                coupled = True
                positive = sorted(((int(weight[c]), int(c)) for c in classes if weight[c] > 0), reverse=True)
                negative = sorted(((int(weight[c]), int(c)) for c in classes if weight[c] < 0))
                for members in _zero_sum_sets(positive, negative):
                    for c in members[1:]:
                        self.couple(first_id[[members[0]]], first_id[[c]])
        return coupled


def _zero_sum_sets(positive: list[tuple[int, int]], negative: list[tuple[int, int]]) -> list[list[int]]:
    """Split classes with weights (summing to zero) into small zero-sum sets: equal and opposite
    weights pair up; the rest accumulate, largest first, until their sum is zero again."""
    by_weight: dict[int, list[int]] = {}
    for w, c in negative:
        by_weight.setdefault(-w, []).append(c)
    sets, rest_pos = [], []
    for w, c in positive:
        if by_weight.get(w):
            sets.append([c, by_weight[w].pop()])
        else:
            rest_pos.append((w, c))
    rest_neg = sorted(((-w, c) for w, cs in by_weight.items() for c in cs), reverse=True)
    current, total = [], 0
    while rest_pos or rest_neg:
        if (total <= 0 and rest_pos) or not rest_neg:
            w, c = rest_pos.pop(0)
            total += w
        else:
            w, c = rest_neg.pop(0)
            total -= w
        current.append(c)
        if total == 0:
            sets.append(current)
            current = []
    if current:
        sets.append(current)
    return sets
