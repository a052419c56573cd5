"""The norm a pruned model uses where a LayerNorm or GroupNorm normalised across channels.

Removing channels from such a norm changes every other channel's output, because its mean and
variance span the channels. The exactness contract's reference zeroes the removed channels where
they are consumed, the norm included, so the exact cut keeps the original statistics with the
removed channels counted as zeros: `PrunedChannelNorm`. One group (LayerNorm over the channel axis,
GroupNorm(1, C)): mean and variance in closed form over the original count, no extra tensors
(mean = sum / C; var = (sum((x - mean)^2) + k * mean^2) / C for k removed channels). Several groups:
the kept channels are put back at their original positions between zeros, `F.group_norm` runs at
the original width, and the kept channels are taken out again.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PrunedChannelNorm(nn.Module):
    """A LayerNorm over the channel axis, or a GroupNorm, with `full_width - num_channels` channels
    removed: statistics over the original `full_width` channels, the removed ones counted as zeros.

    `axis`: the channel axis of the input (-1 channels last, 1 channels first). `spatial`: the
    statistics also span every dim after the channel axis (GroupNorm). `kept`: positions of the
    kept channels in the original width (only with several groups: they say which group each is in).
    """

    RECORD = ("num_channels", "full_width", "axis", "num_groups", "spatial", "eps", "affine", "bias", "kept")

    def __init__(self, num_channels: int, full_width: int, *, axis: int = -1, num_groups: int = 1,
                 spatial: bool = False, eps: float = 1e-5, affine: bool = True, bias: bool = True,
                 kept: Sequence[int] | None = None, device=None, dtype=None):
        super().__init__()
        if not 0 < num_channels <= full_width:
            raise ValueError(f"PrunedChannelNorm: num_channels {num_channels} must be in 1..full_width ({full_width})")
        if num_groups < 1 or full_width % num_groups:
            raise ValueError(f"PrunedChannelNorm: {full_width} channels do not split into {num_groups} groups")
        self.num_channels = int(num_channels)
        self.full_width = int(full_width)
        self.axis = int(axis)
        self.num_groups = int(num_groups)
        self.spatial = bool(spatial)
        self.eps = float(eps)
        self.affine = bool(affine)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(num_channels, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels, **factory)) if affine and bias else None
        self.kept: tuple[int, ...] | None = None
        if num_groups > 1:
            self._set_kept(kept, device)
        elif kept is not None:
            raise ValueError("PrunedChannelNorm: `kept` is only needed with several groups")

    def _set_kept(self, kept: Sequence[int] | None, device=None) -> None:
        kept = tuple(int(k) for k in (kept or ()))
        if len(kept) != self.num_channels or list(kept) != sorted(set(kept)) or \
                (kept and not 0 <= kept[0] <= kept[-1] < self.full_width):
            raise ValueError(f"PrunedChannelNorm: kept must be {self.num_channels} increasing positions "
                             f"below {self.full_width}, got {list(kept)[:8]}...")
        self.kept = kept
        # original position -> index into [x, one zero channel]
        source = torch.full((self.full_width,), self.num_channels, dtype=torch.long)
        source[list(kept)] = torch.arange(self.num_channels)
        self.register_buffer("source_index", source.to(device), persistent=False)
        self.register_buffer("kept_index", torch.tensor(kept, dtype=torch.long, device=device), persistent=False)

    # --- built by surgery --------------------------------------------------------------------
    @classmethod
    def replacing(cls, norm: nn.Module, kept: torch.Tensor, *, axis: int, num_groups: int, spatial: bool,
                  full_width: int) -> "PrunedChannelNorm":
        """The pruned form of `norm` (a LayerNorm or GroupNorm whose weight and bias surgery has
        already cut to the `kept` positions), taking over its parameters and hooks."""
        weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
        new = cls(len(kept), full_width, axis=axis, num_groups=num_groups, spatial=spatial, eps=norm.eps,
                  affine=weight is not None, bias=bias is not None,
                  kept=kept.tolist() if num_groups > 1 else None, device=_device(norm))
        new.weight, new.bias = weight, bias
        new.train(norm.training)
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_forward_hooks_with_kwargs",
                     "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            if hasattr(norm, attr):
                setattr(new, attr, getattr(norm, attr))
        return new

    def narrow(self, kept: torch.Tensor) -> None:
        """Keep channels `kept` (indices into the current ones); surgery has cut weight and bias."""
        self.num_channels = len(kept)
        if self.kept is not None:
            self._set_kept([self.kept[i] for i in kept.tolist()], self.kept_index.device)

    # --- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.axis % x.dim()
        y = self._grouped(x) if self.num_groups > 1 else self._closed_form(x, a)
        if self.weight is None:
            return y
        shape = [1] * x.dim()
        shape[a] = -1
        y = y * self.weight.view(shape)
        return y if self.bias is None else y + self.bias.view(shape)

    def _closed_form(self, x: torch.Tensor, a: int) -> torch.Tensor:
        dims = tuple(range(a, x.dim())) if self.spatial else (a,)
        per = math.prod(x.shape[d] for d in dims if d != a)     # positions per channel in the statistics
        count = self.full_width * per
        mean = x.sum(dims, keepdim=True) / count
        centred = x - mean
        missing = (self.full_width - x.shape[a]) * per          # the removed channels' zeros
        var = ((centred * centred).sum(dims, keepdim=True) + missing * mean * mean) / count
        return centred * torch.rsqrt(var + self.eps)

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis % x.dim() != 1:
            raise ValueError("PrunedChannelNorm with several groups needs its channels on dim 1")
        padded = F.pad(x, (0, 0) * (x.dim() - 2) + (0, 1))       # one zero channel at the end
        full = padded.index_select(1, self.source_index)
        return F.group_norm(full, self.num_groups, None, None, self.eps).index_select(1, self.kept_index)

    def extra_repr(self) -> str:
        groups = f", num_groups={self.num_groups}" if self.num_groups > 1 else ""
        return (f"{self.num_channels} of {self.full_width}, axis={self.axis}{groups}, spatial={self.spatial}, "
                f"eps={self.eps}, affine={self.affine}")

    # --- store ------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        return {"num_channels": self.num_channels, "full_width": self.full_width, "axis": self.axis,
                "num_groups": self.num_groups, "spatial": self.spatial, "eps": self.eps, "affine": self.affine,
                "bias": self.bias is not None, "kept": None if self.kept is None else list(self.kept)}


def _device(module: nn.Module) -> torch.device | None:
    for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        return t.device
    return None
