"""The recorded-forward route: what fx cannot trace runs once, recorded as fx would have written it.

Ops the function mode cannot see (here hidden with `DisableTorchFunction`, as a C++ extension's
would be) are recorded at the ATen level; values read into Python refuse their channels; and a
path that depends on the input's size or values is found by tracing again and named in an
`InputDependentPath` warning (for torch.export's specialised graph too).
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prune_explorer.model.exactness import TOLERANCE, check
from prune_explorer.model.graph import ChannelGraph, InputDependentPath


class Hidden(nn.Module):
    """A concat and a cumulative sum the function mode cannot see; fx refuses the size branch."""

    def __init__(self, unknown: bool):
        super().__init__()
        self.unknown = unknown
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        if x.shape[-1] < 1:
            x = -x
        a, b = F.relu(self.a(x)), F.relu(self.b(x))
        with torch._C.DisableTorchFunction():
            y = torch.cat([a, b], 1)
            if self.unknown:
                y = torch.cumsum(y, 1)
        return self.head(y)


def test_ops_no_function_mode_sees_are_recorded_at_the_aten_level():
    model = Hidden(unknown=False).eval()
    result = check(model, torch.randn(1, 3, 8, 8))
    graph = result.graph
    assert graph.route == "record" and result.max_diff <= TOLERANCE
    assert graph.group("a").prunable and graph.group("b").prunable and "head" in graph.group("a").consumers


def test_an_unknown_aten_op_refuses_the_channels_it_touches_naming_it():
    graph = ChannelGraph.trace(Hidden(unknown=True).eval(), torch.randn(1, 3, 8, 8))
    assert not graph.group("a").prunable and "cumsum" in graph.group("a").reason


def test_values_read_into_python_refuse_their_channels():
    class Reads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            scale = max(y.amax(dim=(0, 2, 3)).tolist())     # Python sees one value per channel
            return self.head(y / scale)

    graph = ChannelGraph.trace(Reads(), torch.randn(1, 3, 8, 8))
    assert graph.route == "record"
    assert not graph.group("conv").prunable and "tolist" in graph.group("conv").reason


class SizeBranch(nn.Module):
    """Concatenates a second branch only for wide inputs: the channels depend on the input's size."""

    def __init__(self):
        super().__init__()
        self.conv, self.extra = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        if x.shape[-1] > 10:
            y = torch.cat([y, self.extra(x)], 1)
        return y.mean((2, 3))


@pytest.mark.parametrize("route", ["record", "export"])
def test_a_path_that_depends_on_the_input_size_is_named_in_a_warning(route):
    with pytest.warns(InputDependentPath, match=r"extra .* the other input"):
        graph = ChannelGraph.trace(SizeBranch(), torch.randn(1, 3, 8, 8), route=route)
    assert graph.route == route


def test_a_path_that_depends_on_the_input_values_is_named_in_a_warning():
    class ValueBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.extra = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            if x.std() < 0.1:                        # a flat image: one more layer
                y = self.extra(y)
            return y

    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, 0, 0] = 2.0                              # std 0.07; redrawn in [0, 2]: std 0.58
    with pytest.warns(InputDependentPath, match="module call extra .*only for the example"):
        ChannelGraph.trace(ValueBranch(), x)


def test_a_path_the_same_for_every_input_gives_no_warning():
    class Cached(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.shape = nn.Conv2d(3, 4, 1), None

        def forward(self, x):
            if self.shape != x.shape:                # recomputed for each size: the same ops
                self.shape, self.grid = x.shape, torch.arange(x.shape[-1], dtype=x.dtype)
            return self.conv(x) + self.grid

    with warnings.catch_warnings():
        warnings.simplefilter("error", InputDependentPath)
        graph = ChannelGraph.trace(Cached(), torch.randn(1, 3, 8, 8))
    assert graph.route == "record"


def test_a_channel_width_written_as_a_number_is_refused_and_one_read_from_the_tensor_only_by_fx():
    class Expands(nn.Module):
        def __init__(self, literal: bool):
            super().__init__()
            self.literal = literal
            self.conv, self.gate, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            g = self.gate(y.mean((2, 3), keepdim=True))
            width = 4 if self.literal else y.shape[1]
            return self.head(y * g.expand(y.shape[0], width, y.shape[2], y.shape[3]))

    x = torch.randn(1, 3, 4, 4)
    assert ChannelGraph.trace(Expands(literal=False), x, route="fx").group("conv").prunable
    for model, route in ((Expands(literal=True), "fx"), (Expands(literal=False), "record")):
        graph = ChannelGraph.trace(model, x, route=route)                # a recording sees only numbers
        assert not graph.group("conv").prunable
        assert "expands to a channel width written as a number (4)" in graph.group("gate").reason
