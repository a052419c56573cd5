"""One handler per op family: how channel ids flow through it, and what it makes a member.

Each handler gets the `Analysis` and a `Call` and returns the result's layout (a `Layout`,
`OPAQUE`, a tuple for multi-output ops, or None for non-tensors). A handler that cannot be sure
refuses the channels it touches with a reason naming the op and its module; it never guesses.

One module per job: `common` (helpers every handler uses), `elementwise` (activations, pooling,
softmax, attention, merges, reductions), `layers` (conv, linear, batch norm, PReLU), `norms` (norms
whose statistics span the channels), `streams` (concatenation, splitting, indexing), `shapes`
(axis moves, reshapes, channel shuffles). A new op family registers its handler with `@handler`.
"""
from __future__ import annotations

from typing import Callable

HANDLERS: dict[str, Callable] = {}


def handler(*names: str):
    def register(fn):
        for name in names:
            HANDLERS[name] = fn
        return fn
    return register


from . import elementwise, layers, norms, shapes, streams  # noqa: E402,F401  (each registers its handlers)
