"""Numeric precision of a tracker: exact fp32, or a faster mode with measured fidelity.

    plan = resolve_precision("fast", device)     # what "fast" means on this device
    model = apply_precision(model, plan)         # int8 linear layers where the plan says so
    Tracker(model, ..., precision="fast")        # the same, done by the tracker

Names (the `precision` field of the tracker, `model.precision` of the annotate job and Serve):

- `fp32`: exact; the outputs equal the reference's (benchmarks/README.md section 1).
- `bf16`: autocast to bfloat16 (CUDA, or CPUs with AVX512-BF16/AMX; elsewhere it is emulated
  and slow). `fp16`: autocast to float16, CUDA only.
- `int8`: int8 weights for the Hiera trunk's and memory attention's linear layers
  (`surgray.model.quantize`), activations quantized per call; CPU only.
- `int8_attn`: `int8`, and the memory attention's query-key products in int8
  (`surgray.model.int8_attention`; probability-value products in bf16 where the CPU has it
  natively); CPU only.
- `fast`: the default fast mode: bf16 on CUDA; on CPU the fastest option that
  benchmarks/README.md section 6 measured within 0.5 J&F points and 99% pixel agreement of
  fp32: `int8_attn` on CPUs with VNNI (int8 dot products with 32-bit accumulation), `int8`
  on others, fp32 where this torch has no quantized CPU engine.
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger("surgray")

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int8_attn", "fast")
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


class PrecisionError(ValueError):
    """A precision name that does not exist, or cannot run on the chosen device."""


@dataclass(frozen=True)
class PrecisionPlan:
    """What a precision name does on one device."""

    name: str  # the name asked for ("fast" stays "fast")
    autocast_dtype: torch.dtype | None
    int8_linears: bool = False
    int8_attention: bool = False

    @property
    def exact(self) -> bool:
        return self.autocast_dtype is None and not self.int8_linears and not self.int8_attention


def normalize_precision(value: str) -> str:
    name = _ALIASES.get(str(value).strip().lower(), str(value).strip().lower())
    if name not in PRECISIONS:
        raise PrecisionError(f"precision {value!r}: use one of {', '.join(PRECISIONS)}")
    return name


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); Linux /proc/cpuinfo."""
    from surgray.model.quantize import cpu_flags

    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(value: str, device: torch.device | str) -> PrecisionPlan:
    """The plan for precision `value` on `device`, or a PrecisionError naming the problem."""
    from surgray.model.quantize import full_range_activations, int8_supported

    name = normalize_precision(value)
    device = torch.device(device)
    cuda = device.type == "cuda"
    if name == "fp32":
        return PrecisionPlan(name, None)
    if name == "bf16":
        return PrecisionPlan(name, torch.bfloat16)
    if name == "fp16":
        if not cuda:
            raise PrecisionError(
                "precision fp16 needs a CUDA device; use fp32, int8 or bf16 on CPU"
            )
        return PrecisionPlan(name, torch.float16)
    if name in ("int8", "int8_attn"):
        if cuda:
            raise PrecisionError(f"precision {name} runs on CPU only; use bf16 (or fast) on CUDA")
        if not int8_supported():
            raise PrecisionError(f"precision {name}: this torch build has no quantized CPU engine")
        return PrecisionPlan(name, None, int8_linears=True, int8_attention=name == "int8_attn")
    # fast
    if cuda:
        return PrecisionPlan(name, torch.bfloat16)
    if int8_supported():
        # int8 dot products accumulate exactly only with VNNI, where int8 attention was measured.
        return PrecisionPlan(name, None, int8_linears=True, int8_attention=full_range_activations())
    logger.warning("precision fast: no quantized CPU engine in this torch; running fp32")
    return PrecisionPlan(name, None)


def apply_precision(model: torch.nn.Module, plan: PrecisionPlan) -> torch.nn.Module:
    """The model to run under `plan`: the same object when nothing changes, else a copy with
    int8 linear layers and, where the plan says so, int8 memory attention (the caller's
    float model is left as it was)."""
    if not plan.int8_linears and not plan.int8_attention:
        return model
    from surgray.model.checkpoints.memory_release import release_free_heap
    from surgray.model.quantize import DEFAULT_INT8_PREFIXES, quantize_linears

    # The float weights of the layers about to be replaced are shared with the caller's model
    # rather than copied: the int8 copy reads them once and drops them (Hiera-T: 110 MB of
    # float weights not copied). Normal tensors even when called under inference_mode:
    # Hiera's caches read parameters' version counters, which inference tensors do not have.
    with torch.inference_mode(False):
        shared = {id(t): t for t in _replaced_linear_tensors(model, DEFAULT_INT8_PREFIXES)}
        quantized = copy.deepcopy(model, memo=shared).eval()
        replaced = quantize_linears(quantized, DEFAULT_INT8_PREFIXES) if plan.int8_linears else []
    release_free_heap()
    attention = _install_int8_attention(quantized) if plan.int8_attention else 0
    logger.info(
        "precision %s: %d linear layers with int8 weights, %d memory-attention layers in int8",
        plan.name,
        len(replaced),
        attention,
    )
    return quantized


def _install_int8_attention(model: torch.nn.Module) -> int:
    """Give every memory-attention layer's self- and cross-attention the int8 kernel (it hands
    attentions too small to gain back to the fused kernel); returns how many layers."""
    from surgray.model.int8_attention import int8_attention
    from surgray.model.sam2.memory_attention import MemoryAttentionLayer

    values_dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    kernel = functools.partial(int8_attention, values_dtype=values_dtype)
    layers = [m for m in model.modules() if isinstance(m, MemoryAttentionLayer)]
    for layer in layers:
        layer.cross_attn_image.attention_kernel = kernel
        layer.self_attn.attention_kernel = kernel
    return len(layers)


def _replaced_linear_tensors(
    model: torch.nn.Module, prefixes: tuple[str, ...]
) -> list[torch.Tensor]:
    """Weights and biases of the `nn.Linear` layers `quantize_linears(prefixes)` replaces."""
    tensors = []
    for prefix in prefixes:
        try:
            root = model.get_submodule(prefix)
        except AttributeError:
            continue
        for module in root.modules():
            if type(module) is torch.nn.Linear:
                tensors.extend(t for t in (module.weight, module.bias) if t is not None)
    return tensors
