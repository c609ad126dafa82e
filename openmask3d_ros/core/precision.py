"""Numeric precision options shared by the model wrappers (SAM, CLIP): checks and int8."""
from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "fp16")
# the CLIP encoder also takes ``auto``: fp16 autocast on a GPU, fp32 on a CPU (its default)
ENCODER_PRECISIONS = ("auto", *PRECISIONS)


def check_precision(section: str, precision: str, quantize: bool, on_gpu: bool,
                    allowed: tuple[str, ...] = PRECISIONS) -> None:
    """ValueError naming ``<section>.precision`` / ``<section>.quantize`` when they cannot run."""
    if precision not in allowed:
        raise ValueError(f"{section}.precision must be {', '.join(allowed[:-1])} or "
                         f"{allowed[-1]}, got '{precision}'")
    if precision == "fp16" and not on_gpu:
        raise ValueError(f"{section}.precision fp16 needs a CUDA device; use bf16 on a CPU")
    if quantize and on_gpu:
        raise ValueError(f"{section}.quantize (dynamic int8) runs on the CPU only; use "
                         "precision fp16/bf16 on a GPU")


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """The precision a model runs in: ``auto`` is fp16 on a GPU and fp32 on a CPU; any other
    value is itself (``fp32`` is fp32 on a GPU too)."""
    if precision == "auto":
        return "fp16" if on_gpu else "fp32"
    return precision


def quantize_int8(module, section: str):
    """Dynamic int8 quantization of the linear layers (weights int8, activations at run time)."""
    import warnings

    import torch
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:
        raise ValueError(f"{section}.quantize needs torch.ao.quantization: {exc}") from exc
    with warnings.catch_warnings():       # deprecated in favour of torchao, still working
        warnings.simplefilter("ignore")
        return quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
