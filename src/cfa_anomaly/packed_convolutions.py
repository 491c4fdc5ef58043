"""Backbone convolutions with their weights packed once for oneDNN and the ReLU after them fused (CPU).

PyTorch's eager CPU convolution hands oneDNN its weights in the plain layout, so every call reorders each
weight into the blocked layout the kernel runs on (wide_resnet50_2 up to layer3: 43 reorders per batch,
about 6 ms per image on a 2-core Xeon), and the ReLU and the residual addition after a convolution run as
separate passes over its output. oneDNN's pointwise convolution (torch.ops.mkldnn._convolution_pointwise,
the op inductor's frozen graphs call) takes a weight packed once, and applies the ReLU, or the addition
and then the ReLU, in the convolution's epilogue. It is the same convolution kernel, so the results equal
the unpacked network's (bit for bit for wide_resnet50_2 and mobilenet_v2, benchmarks/packed_backbone.py).

fold_and_pack builds this network from the original without copying it: each convolution's weights, with
the eval-mode batch norm after it folded in, are made and packed one at a time (a whole folded copy made
first had raised the training peak by ~0.1 GB). Used for the frozen backbone on a CPU, its input in float32
(not under autocast, whose casts the op bypasses).

Convolutions can be packed in bfloat16 (the backbone's last stage under model.precision=mixed,
backbones.py): each converts its input to bfloat16 and accumulates in float32, and one whose output is
added to a residual adds it in float32, so the stream between blocks stays float32; only the branches and
the convolutions' own inputs are rounded, about the error of oneDNN's implicit-bfloat16 mode at the
bfloat16 kernels' speed (4-5x float32 on AMX).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

Activation = tuple[str, list[float]]  # oneDNN's name for it and its scalars
LowPrecision = Callable[[str], bool]  # a convolution's module path -> whether it runs in bfloat16
NO_ACTIVATION: Activation = ("none", [])
ADDITIONS = (operator.add, operator.iadd, torch.add)
_ACTIVATIONS = {  # the fused activations in torch, for the unfused fallback
    "none": lambda x, scalars: x,
    "relu": lambda x, scalars: torch.relu(x),
    "hardtanh": lambda x, scalars: torch.clamp(x, *scalars),
}


@functools.cache
def packing_available() -> bool:
    """Whether this torch build has oneDNN's pointwise convolution and its weight packing (checked once:
    the backbone asks on every forward)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_convolution_pointwise")
            and hasattr(ops, "_reorder_convolution_weight"))


@functools.cache
def bfloat16_packing_available() -> bool:
    """Whether convolutions can also be packed in bfloat16: oneDNN supports bfloat16 on this CPU."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    return packing_available() and bool(supported())


class PackedConv2d(nn.Module):
    """act(conv(x)) or act(conv(x) + other), the weight packed for oneDNN (again on the first call, for that
    call's input size, which decides the kernel's layout; other sizes are still computed right, with a
    reorder); CPU. dtype: the convolution's arithmetic, float32, or bfloat16 (float32 accumulation; x
    is converted, and conv(x) + other is added and activated in float32)."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None,
                 activation: Activation, adds: bool, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        weight = weight.to(dtype)
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.activation, self.adds = activation, adds
        self.kernel, self.out_channels = list(conv.kernel_size), conv.out_channels
        # packed now, so the folded weight is freed at once (all of them at once would be a whole copy)
        self.packed = self._pack(weight.detach().contiguous(memory_format=torch.channels_last), None)
        self.bias = None if bias is None else bias.detach().to(dtype, copy=True)
        self.sized = False

    def _pack(self, weight: torch.Tensor, input_size: list[int] | None) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_convolution_weight(
            weight, self.padding, self.stride, self.dilation, self.groups, input_size)

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        x = x.to(self.dtype)
        if not self.sized:
            self.packed = self._pack(self.packed.to_dense().contiguous(memory_format=torch.channels_last),
                                     list(x.shape))
            self.sized = True
        name, scalars = self.activation
        if self.adds and other is not None and (self.dtype != torch.float32  # the sum in float32
                                                or tuple(other.shape) != self.output_shape(x)):  # a broadcast
            return _ACTIVATIONS[name](self._convolve(x, NO_ACTIVATION).float() + other, scalars)
        if self.adds:
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, self.packed, self.bias, self.padding, self.stride, self.dilation, self.groups,
                "add", None, name, scalars, "")
        return self._convolve(x, self.activation)

    def _convolve(self, x: torch.Tensor, activation: Activation) -> torch.Tensor:
        name, scalars = activation
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.packed, self.bias, self.padding, self.stride, self.dilation, self.groups, name, scalars,
            "")

    def output_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """The convolution's output shape for input x."""
        geometry = zip(x.shape[2:], self.padding, self.dilation, self.kernel, self.stride)
        sizes = [(size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
                 for size, pad, dilation, kernel, stride in geometry]
        return (x.shape[0], self.out_channels, *sizes)


def _packable(module: nn.Module | None) -> bool:
    """A plain float32 convolution (the only kind packed)."""
    return (type(module) is nn.Conv2d and module.padding_mode == "zeros"
            and not isinstance(module.padding, str) and module.weight.dtype == torch.float32)


def _activation(node: fx.Node, modules: dict[str, nn.Module]) -> Activation | None:
    """The fusable activation a node applies, or None."""
    if node.op == "call_module":
        module = modules.get(node.target)
        if type(module) is nn.ReLU:
            return ("relu", [])
        if type(module) in (nn.ReLU6, nn.Hardtanh):
            return ("hardtanh", [float(module.min_val), float(module.max_val)])
    if node.op == "call_function" and node.target in (F.relu, torch.relu) and len(node.args) == 1:
        return ("relu", [])
    return None


def _sole_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _residual(add: fx.Node | None, conv: fx.Node) -> fx.Node | None:
    """The other operand when `add` is conv + other (or other + conv) of two graph values, else None."""
    if add is None or add.op != "call_function" or add.target not in ADDITIONS or add.kwargs:
        return None
    operands = add.args
    if len(operands) != 2 or not all(isinstance(arg, fx.Node) for arg in operands):
        return None
    if operands[0] is operands[1]:
        return None
    return operands[1] if operands[0] is conv else operands[0]


def _drop_identities(graph_module: fx.GraphModule, modules: dict[str, nn.Module]) -> None:
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module" and type(modules.get(node.target)) is nn.Identity:
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)


def _folded_norm(node: fx.Node, modules: dict[str, nn.Module]) -> nn.BatchNorm2d | None:
    """The eval-mode batch norm that alone follows a convolution node, or None."""
    user = _sole_user(node)
    norm = modules.get(user.target) if user is not None and user.op == "call_module" else None
    if type(norm) is nn.BatchNorm2d and not norm.training and norm.track_running_stats:
        return norm
    return None


def _folded_weights(conv: nn.Conv2d, norm: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if norm is None:
        return conv.weight, conv.bias
    with torch.no_grad():
        return fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                                    norm.weight, norm.bias)


def pack_convolutions(graph_module: fx.GraphModule, low_precision: LowPrecision | None = None
                      ) -> fx.GraphModule:
    """Replace (in place) every plain float32 convolution of a traced network by a PackedConv2d, folding the
    eval-mode batch norm that alone follows it, and fusing the ReLU (or ReLU6) that then alone follows, or
    the residual addition and the ReLU after that. low_precision: which convolutions (by module path) run
    in bfloat16; default none."""
    modules = dict(graph_module.named_modules())
    _drop_identities(graph_module, modules)
    graph = graph_module.graph
    for index, node in enumerate(list(graph.nodes)):
        if node.op != "call_module" or not _packable(modules.get(node.target)):
            continue
        norm = _folded_norm(node, modules)
        fused = [node] if norm is None else [node, _sole_user(node)]
        user = _sole_user(fused[-1])
        other = _residual(user, fused[-1])
        after_add = _sole_user(user) if other is not None else None
        if other is not None and after_add is not None and _activation(after_add, modules) is not None:
            fused, activation = [*fused, user, after_add], _activation(after_add, modules)
        elif user is not None and _activation(user, modules) is not None:
            fused, activation, other = [*fused, user], _activation(user, modules), None
        else:
            activation, other = NO_ACTIVATION, None
        conv = modules[node.target]
        name = f"packed_conv_{index}"
        dtype = torch.bfloat16 if low_precision is not None and low_precision(node.target) else torch.float32
        graph_module.add_submodule(name, PackedConv2d(conv, *_folded_weights(conv, norm), activation,
                                                      other is not None, dtype))
        with graph.inserting_before(fused[-1]):
            packed = graph.call_module(name, (node.args[0],) if other is None else (node.args[0], other))
        fused[-1].replace_all_uses_with(packed)
        for old in reversed(fused):
            graph.erase_node(old)
    graph.lint()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    return graph_module


def fold_and_pack(module: nn.Module, low_precision: LowPrecision | None = None) -> fx.GraphModule:
    """A traced view of a frozen float32 network (it shares the original's modules; nothing is copied) with
    its convolutions folded and packed (pack_convolutions)."""
    return pack_convolutions(fx.symbolic_trace(module), low_precision)
