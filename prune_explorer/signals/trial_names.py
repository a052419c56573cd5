"""Trial tensor names: which of a model's modules, calls and parameters a name in a trial stands for,
under the three naming schemes `trials` reads (this project's compact and full captures, the AWS
example's, stock smdebug's)."""
from __future__ import annotations

import re

from torch import nn

from .capture import COMPACT_COUNTS, COMPACT_LATER, COMPACT_STATS

_COMPACT_TAP = re.compile(rf"^compact/(.+)_(\d+)/({'|'.join(COMPACT_STATS + COMPACT_LATER + COMPACT_COUNTS)})$")
_COMPACT_NORM = re.compile(r"^compact/(.+)/weight_(l1|l2)$")
_GRAD_CALL = re.compile(r"^gradient/(.+)_(\d+)_([A-Za-z0-9]+)_output$")
_GRAD_NO_CALL = re.compile(r"^gradient/(.+)_([A-Za-z0-9]+)_output$")
_BN_STAT = re.compile(r"^(.+)\.(running_mean|running_var)_output_\d+$")
_ACT_CALL = re.compile(r"^(.+)_(\d+)_output_0$")
_ACT_STOCK = re.compile(r"^(.+)_output_(\d+)$")
_INPUT = re.compile(r"^(.+)_input_\d+$")
_PARAM = re.compile(r"^([A-Za-z0-9]+)_(.+)$")


class _Names:
    """Classify tensor names against a model (cached: names repeat every step)."""

    def __init__(self, model: nn.Module):
        self.modules = {n: m for n, m in model.named_modules()}
        self.params = {n: tuple(t.shape) for n, t in model.state_dict().items()}
        self.cache: dict[str, tuple] = {}

    def __call__(self, name: str) -> tuple:
        if name not in self.cache:
            self.cache[name] = self._classify(name)
        return self.cache[name]

    def _classify(self, name: str) -> tuple:
        mods = self.modules
        if name == "compact/steps":
            return ("steps",)
        if name.startswith("scalar/"):
            return ("unused", name, "a training scalar, not a ranking input")
        if m := _COMPACT_TAP.match(name):
            if m[1] in mods:
                return ("compact", (m[1], int(m[2])), m[3])
            return ("unused", name, "unknown module")
        if m := _COMPACT_NORM.match(name):
            if m[1] in mods:
                return ("norm", m[1], m[2])
            return ("unused", name, "unknown module")
        if name.startswith("gradient/"):
            if (m := _GRAD_CALL.match(name)) and m[1] in mods:
                return ("grad", (m[1], int(m[2])), "full")
            if (m := _GRAD_NO_CALL.match(name)) and m[1] in mods:
                return ("grad_nocall", m[1], "aws")
            if (m := _PARAM.match(name[len("gradient/"):])) and m[2] in self.params:
                return ("unused", name, "parameter gradient")
            return ("unused", name, "unknown gradient name")
        if (m := _BN_STAT.match(name)) and m[1] in mods:
            return ("param", f"{m[1]}.{m[2]}", "aws")
        if (m := _ACT_CALL.match(name)) and m[1] in mods:
            return ("act", (m[1], int(m[2])), "full/aws")
        if (m := _ACT_STOCK.match(name)) and m[1] in mods:
            return ("act", (m[1], int(m[2])), "stock")
        if (m := _INPUT.match(name)) and m[1] in mods:
            return ("unused", name, "module input")
        if (m := _PARAM.match(name)) and m[2] in self.params:
            return ("param", m[2], "weights")
        return ("unused", name, "unknown name")
