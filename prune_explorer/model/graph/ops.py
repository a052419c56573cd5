"""The operator registry: which handler understands which op, however the model's code spells it.

One entry per op family; a family lists its spellings as Python functions (`F.conv2d`,
`torch.add`), tensor methods (`"add_"`) and ATen op names (`aten.conv2d`). torch.nn's own modules
map onto the same families (`MODULE_OPS`), with their parameters named by the module. Anything not
listed is *not understood*: the channels it touches are refused, naming the op and the module.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from ..kinds import registered_kind
from ..norms import PrunedChannelNorm

ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
    nn.Tanh, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
)
PASS_MODULES = ACTIVATION_MODULES + (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ReflectionPad2d,
    nn.ReplicationPad2d, nn.ConstantPad2d,
)
# this package's own modules in pruned models: leaves, like torch.nn's (their forward mixes channels
# in ways only their handler knows are exact)
OWN_LEAVES = (PrunedChannelNorm,)


@dataclass(frozen=True)
class Family:
    """One op family: its handler name and the spellings it answers to."""

    handler: str
    functions: tuple = ()
    names: tuple[str, ...] = ()          # positional argument names for `functions`
    methods: tuple[str, ...] = ()
    method_names: tuple[str, ...] = ()   # argument names after `self` ("*x" collects the rest)
    aten: tuple[str, ...] = ()


def _f(*names):
    return tuple(getattr(F, n) for n in names if hasattr(F, n))


def _t(*names):
    return tuple(getattr(torch, n) for n in names if hasattr(torch, n))


_UNARY = ("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "silu_", "gelu", "hardswish",
          "hardswish_", "hardsigmoid", "hardsigmoid_", "sigmoid", "sigmoid_", "tanh", "tanh_", "leaky_relu",
          "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "mish", "mish_", "softplus", "softsign",
          "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
          "clone", "contiguous", "detach", "to", "float", "half", "double", "type_as", "clamp", "clamp_",
          "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "clip", "clip_", "neg", "abs", "exp", "sqrt",
          "rsqrt", "square", "pow", "erf", "lift_fresh_copy", "_to_copy", "native_dropout", "alias",
          "rsub", "logical_not", "copy")
_SPATIAL = ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
            "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
            "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample", "upsample_nearest2d",
            "upsample_bilinear2d", "pad", "constant_pad_nd", "reflection_pad2d", "replicate_pad2d",
            "max_pool2d_with_indices", "_adaptive_avg_pool2d", "upsample_nearest2d.vec")

FAMILIES: tuple[Family, ...] = (
    Family("conv", _f("conv1d", "conv2d", "conv3d") + _t("conv1d", "conv2d", "conv3d"),
           ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
           aten=("conv1d", "conv2d", "conv3d", "convolution", "_convolution")),
    Family("conv_transpose", _f("conv_transpose1d", "conv_transpose2d", "conv_transpose3d") +
           _t("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
           ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
           aten=("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")),
    Family("linear", _f("linear"), ("input", "weight", "bias"), aten=("linear",)),
    Family("batch_norm", _f("batch_norm") + _t("batch_norm"),
           ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
           aten=("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
                 "native_batch_norm", "_batch_norm_impl_index", "instance_norm")),
    Family("instance_norm", _f("instance_norm"),
           ("input", "running_mean", "running_var", "weight", "bias")),
    Family("layer_norm", _f("layer_norm") + _t("layer_norm"), ("input", "normalized_shape", "weight", "bias", "eps"),
           aten=("layer_norm", "native_layer_norm")),
    Family("group_norm", _f("group_norm") + _t("group_norm"), ("input", "num_groups", "weight", "bias", "eps"),
           aten=("group_norm", "native_group_norm")),
    Family("prelu", _f("prelu") + _t("prelu"), ("input", "weight"), methods=("prelu",), method_names=("weight",),
           aten=("prelu", "_prelu_kernel")),
    Family("unary", _f(*_UNARY) + _t(*_UNARY) + (operator.neg, operator.abs), ("input",),
           methods=_UNARY, method_names=(), aten=_UNARY),
    Family("spatial", _f(*_SPATIAL), ("input",), aten=_SPATIAL),
    Family("merge", (operator.mul, operator.imul, operator.truediv, operator.itruediv) + _t("mul", "div", "maximum",
                                                                                          "minimum", "true_divide"),
           ("input", "other"), methods=("mul", "mul_", "div", "div_", "maximum", "minimum", "true_divide"),
           method_names=("other",), aten=("mul", "mul_", "div", "div_", "maximum", "minimum")),
    Family("residual", (operator.add, operator.iadd, operator.sub, operator.isub) + _t("add", "sub"),
           ("input", "other"), methods=("add", "add_", "sub", "sub_"), method_names=("other",),
           aten=("add", "add_", "sub", "sub_")),
    Family("cat", _t("cat", "concat", "concatenate"), ("tensors", "dim"), aten=("cat", "concat")),
    Family("chunk", _t("chunk"), ("input", "chunks", "dim"), methods=("chunk",), method_names=("chunks", "dim"),
           aten=("chunk",)),
    Family("split", _t("split"), ("input", "split_size", "dim"), methods=("split",), method_names=("split_size", "dim"),
           aten=("split", "split_with_sizes")),
    Family("unbind", _t("unbind"), ("input", "dim"), methods=("unbind",), method_names=("dim",), aten=("unbind",)),
    Family("getitem", (operator.getitem,), ("input", "index")),
    Family("slice", (), (), aten=("slice", "select")),
    Family("narrow", _t("narrow"), ("input", "dim", "start", "length"), methods=("narrow",),
           method_names=("dim", "start", "length"), aten=("narrow",)),
    Family("pixel_shuffle", _f("pixel_shuffle") + _t("pixel_shuffle"), ("input", "upscale_factor"),
           aten=("pixel_shuffle",)),
    Family("pixel_unshuffle", _f("pixel_unshuffle") + _t("pixel_unshuffle"), ("input", "downscale_factor"),
           aten=("pixel_unshuffle",)),
    Family("permute", _t("permute"), ("input", "dims"), methods=("permute",), method_names=("*dims",),
           aten=("permute",)),
    Family("transpose", _t("transpose", "swapaxes", "swapdims"), ("input", "dim0", "dim1"),
           methods=("transpose", "swapaxes", "swapdims"), method_names=("dim0", "dim1"), aten=("transpose",)),
    Family("movedim", _t("movedim", "moveaxis"), ("input", "source", "destination"),
           methods=("movedim", "moveaxis"), method_names=("source", "destination"), aten=("movedim",)),
    Family("reshape", _t("reshape", "flatten", "squeeze", "unsqueeze"), ("input", "shape"),
           methods=("view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as"),
           method_names=("*shape",), aten=("view", "reshape", "_unsafe_view", "flatten", "squeeze", "unsqueeze")),
    Family("expand", (), (), methods=("expand", "expand_as"), method_names=("*sizes",), aten=("expand",)),
    Family("reduce", _t("mean", "sum", "amax", "amin", "norm") + (torch.linalg.vector_norm,), ("input", "dim"),
           methods=("mean", "sum", "amax", "amin", "norm"), method_names=("dim",),
           aten=("mean", "sum", "amax", "amin", "linalg_vector_norm")),
    Family("softmax", _f("softmax", "log_softmax") + _t("softmax", "log_softmax"), ("input", "dim"),
           methods=("softmax", "log_softmax"), method_names=("dim",), aten=("_softmax", "softmax", "_log_softmax",
                                                                           "log_softmax")),
    Family("metadata", (getattr, torch._assert, len), (), methods=("size", "dim", "numel", "__len__"),
           aten=("sym_size", "sym_numel", "_assert_async", "_assert_scalar")),
)


# functions of a family whose arguments are named otherwise than the family's
_OWN_NAMES = {torch.norm: ("input", "p", "dim", "keepdim"), torch.linalg.vector_norm: ("input", "ord", "dim", "keepdim")}


FUNCTIONS: dict[Any, tuple[str, tuple[str, ...]]] = {}
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {}
ATEN: dict[str, str] = {}
for _fam in FAMILIES:
    for _fn in _fam.functions:
        FUNCTIONS[_fn] = (_fam.handler, _OWN_NAMES.get(_fn, _fam.names))
    for _m in _fam.methods:
        METHODS[_m] = (_fam.handler, ("input",) + _fam.method_names)
    for _a in _fam.aten:
        ATEN[_a] = _fam.handler
METHODS["norm"] = ("reduce", ("input", "p", "dim", "keepdim"))
try:  # torchvision wraps stochastic_depth for fx: per-sample (identity in eval), so channel-wise
    from torchvision.ops import stochastic_depth as _stochastic_depth

    FUNCTIONS[_stochastic_depth] = ("unary", ("input",))
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass


@dataclass(frozen=True)
class ModuleOp:
    """How a leaf torch.nn module maps onto an op family: parameter roles -> attribute names."""

    handler: str
    params: Callable[[nn.Module], dict[str, str | None]]
    constants: Callable[[nn.Module], dict[str, Any]] = lambda m: {}
    kind: str | None = None             # a registered layer kind: the kind of the member it makes


def _present(m: nn.Module, *names: str) -> dict[str, str | None]:
    return {n: (n if getattr(m, n, None) is not None else None) for n in names}


MODULE_OPS: tuple[tuple[type, ModuleOp], ...] = (
    (_ConvNd, ModuleOp("conv", lambda m: _present(m, "weight", "bias"),
                       lambda m: {"groups": m.groups, "transposed": m.transposed})),
    (nn.Linear, ModuleOp("linear", lambda m: _present(m, "weight", "bias"))),
    (_NormBase, ModuleOp("batch_norm", lambda m: _present(m, "weight", "bias", "running_mean", "running_var"))),
    (nn.LayerNorm, ModuleOp("layer_norm", lambda m: _present(m, "weight", "bias"),
                            lambda m: {"normalized_shape": tuple(m.normalized_shape)})),
    (nn.GroupNorm, ModuleOp("group_norm", lambda m: _present(m, "weight", "bias"),
                            lambda m: {"num_groups": m.num_groups})),
    (nn.PReLU, ModuleOp("prelu", lambda m: _present(m, "weight"))),
    (PrunedChannelNorm, ModuleOp("channel_norm", lambda m: _present(m, "weight", "bias"))),
    (nn.ChannelShuffle, ModuleOp("channel_shuffle", lambda m: {}, lambda m: {"groups": m.groups})),
    (nn.PixelShuffle, ModuleOp("pixel_shuffle", lambda m: {}, lambda m: {"upscale_factor": m.upscale_factor})),
    (nn.PixelUnshuffle, ModuleOp("pixel_unshuffle", lambda m: {}, lambda m: {"downscale_factor": m.downscale_factor})),
    (nn.Flatten, ModuleOp("reshape", lambda m: {})),
    (nn.Unflatten, ModuleOp("reshape", lambda m: {})),
    (nn.Softmax, ModuleOp("softmax", lambda m: {}, lambda m: {"dim": m.dim})),
    (nn.MultiheadAttention, ModuleOp("attention", lambda m: {})),
    (ACTIVATION_MODULES + (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity),
     ModuleOp("unary", lambda m: {})),
    (tuple(t for t in PASS_MODULES if t not in ACTIVATION_MODULES), ModuleOp("spatial", lambda m: {})),
)


def module_op(module: nn.Module) -> ModuleOp | None:
    """How a leaf module maps onto an op family: a registered layer kind's (`kinds.register_layer_kind`)
    first, then torch.nn's."""
    custom = registered_kind(module)
    if custom is not None:
        return ModuleOp(custom.op, custom.params, custom.constants, kind=custom.name)
    for types, op in MODULE_OPS:
        if isinstance(module, types):
            return op
    return None


def function_op(target: Any) -> tuple[str, tuple[str, ...]] | None:
    try:
        return FUNCTIONS.get(target)
    except TypeError:  # unhashable target
        return None


def aten_op(target: Any) -> tuple[str, tuple[str, ...]] | None:
    packet = getattr(target, "overloadpacket", None)
    if packet is None:
        return None
    handler = ATEN.get(packet.__name__)
    if handler is None:
        return None
    names = tuple("input" if a.name == "self" else a.name for a in target._schema.arguments)
    return handler, names


def bind(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    """Positional and keyword arguments by name; a `*name` collects the rest as a tuple."""
    bound: dict[str, Any] = {}
    for i, name in enumerate(names):
        if name.startswith("*"):
            rest = args[i:]
            if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
                rest = tuple(rest[0])
            bound[name[1:]] = tuple(rest)
            break
        if i < len(args):
            bound[name] = args[i]
    for key, value in kwargs.items():
        bound["input" if key == "self" else key] = value
    return bound
