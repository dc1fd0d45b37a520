"""Int8 weights for the network's linear layers (dynamic quantization, CPU inference only).

`quantize_linears(model, prefixes)` replaces every `nn.Linear` under the named submodules with
an `Int8Linear`: weights stored as int8 with one scale per output channel, activations
quantized per call from their observed range (torch's `quantized::linear_dynamic`, fbgemm/x86
kernels: AVX2 and AVX-512, VNNI where present). Accumulation is int32, output float32.

Why our own module rather than `torch.ao.quantization.quantize_dynamic`: the quantized module
that function installs exposes `bias` as a method, while Hiera's window padding reads the
projection's `bias` tensor (a zero token projects to the bias); `Int8Linear.bias` stays a
tensor, so every caller of the float layer keeps working. The quantized model is for
inference only and never loads or saves a checkpoint (its state dict differs).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

# Where the time goes on CPU (benchmarks/README.md section 1): the Hiera trunk and memory
# attention's projections. The SAM heads, prompt encoder and pointer MLPs are small and
# decide mask borders and object scores directly, so they keep float weights.
DEFAULT_INT8_PREFIXES = ("image_encoder.trunk", "memory_attention")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def full_range_activations() -> bool:
    """Whether 8-bit activations are safe: VNNI's int8 dot products accumulate in 32 bits,
    while plain AVX2/AVX-512 sum byte pairs in 16 bits and can saturate (then 7 bits)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_supported() -> bool:
    """Whether this torch build has a CPU engine for dynamic int8 linear layers."""
    engines = torch.backends.quantized.supported_engines
    return any(name in engines for name in ("x86", "fbgemm", "qnnpack", "onednn"))


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 per-output-channel weights (see the module docstring)."""

    def __init__(self, linear: nn.Linear, reduce_range: bool | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # 7-bit activations unless the CPU has VNNI (full_range_activations): half the
        # activation rounding error where it is safe (measured: trunk output error 0.020 -> 0.011).
        if reduce_range is None:
            reduce_range = not full_range_activations()
        self.reduce_range = reduce_range
        weight = linear.weight.detach().float().cpu()
        scale = weight.abs().amax(dim=1).clamp_min(1e-8) / 127.0
        zero = torch.zeros(weight.shape[0], dtype=torch.int64)
        with warnings.catch_warnings():
            # torch 2.13 marks quantized tensors deprecated (torchao is their successor); the
            # fbgemm kernels behind them are what this module uses, and they still ship.
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu().clone()
        self.register_buffer("bias", bias, persistent=False)
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        flat = x.reshape(-1, self.in_features).float().contiguous()
        out = torch.ops.quantized.linear_dynamic(flat, self._packed, self.reduce_range)
        return out.reshape(*x.shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linears(
    model: nn.Module, prefixes: Sequence[str] = DEFAULT_INT8_PREFIXES
) -> list[str]:
    """Replace the `nn.Linear` layers under `prefixes` (dotted submodule names) by
    `Int8Linear`, in place; returns the replaced layers' names. CPU models only."""
    if not int8_supported():
        raise RuntimeError("this torch build has no quantized CPU engine for int8 linear layers")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"int8 linear layers run on CPU only; the model is on {device}")
    replaced = []
    for prefix in prefixes:
        try:
            root = model.get_submodule(prefix)
        except AttributeError:
            continue  # a network without this part (e.g. no memory attention)
        for name, child in list(root.named_modules()):
            for attr, module in list(child.named_children()):
                if type(module) is nn.Linear:
                    setattr(child, attr, Int8Linear(module))
                    replaced.append(".".join(p for p in (prefix, name, attr) if p))
    return replaced
