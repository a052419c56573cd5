"""Size kinds: module attributes the forward reads as widths, rewritten by surgery.

The pruned model runs the same code as the original, so a width written into that code (a slice
`y[:, :k]`, split sizes, the channel dim of a reshape) would still hold the old number. When the
number is an attribute of a module the op runs in (`y[:, :self.k]`, `torch.split(x, self.splits, 1)`,
`view(B, self.c, H, W)`), the graph records that attribute as a member of one of these kinds, with
the positions whose kept count it must equal; surgery sets it, store records it. A width written as
a literal is refused by the graph, naming the op (a pruned model would keep it).
"""
from __future__ import annotations

import numpy as np

from .base import LayerKind


class _Attribute(LayerKind):
    """No tensors: a module attribute the forward reads, set by `resize`."""

    sliced_roles = ()
    produces = False
    attribute = True

    def params(self, module):
        return {}


class SizeAttribute(_Attribute):
    """An int attribute the op reads as `multiplier * attribute`, a width equal to the kept positions
    it counts (`out_factor` positions per channel: a flatten's features), negative for a bound
    counted from the end (`y[:, -self.k:]`): extra `sign` (the width's) and `divisor` (the multiplier)."""

    name = "size"

    def resize(self, module, member, out_ix, in_ix):
        if out_ix is not None:
            width = member.extra.get("sign", 1) * len(out_ix)
            setattr(module, member.extra["attr"], width // member.extra.get("divisor", 1))
        return module


class SplitSizes(_Attribute):
    """An attribute holding split sizes: a list (`split([a, b], 1)`) becomes the kept positions of
    each part; an int (`split(a, 1)` into equal parts, kept equal by the graph) the kept per part."""

    name = "split_sizes"

    def resize(self, module, member, out_ix, in_ix):
        if out_ix is None:
            return module
        parts = member.extra["parts"]
        edges = np.concatenate([[0], np.cumsum(parts)])
        counts = np.diff(np.searchsorted(out_ix.numpy(), edges)).tolist()
        attr = member.extra["attr"]
        if member.extra["form"] == "int":
            setattr(module, attr, int(counts[0]))
        else:
            setattr(module, attr, type(getattr(module, attr))(int(c) for c in counts))
        return module
