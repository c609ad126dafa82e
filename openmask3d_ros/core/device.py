"""The one resolver of the ``device`` setting (auto | cpu | cuda | cuda:N) for every model."""
from __future__ import annotations


def resolve_device(requested: str = "auto", needs_torch: bool = True) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'. An unavailable GPU request is an error.

    torch is imported only to answer 'auto' or 'cuda' for models that need it: importing it
    costs seconds and hundreds of MB, which stand-in runs and stand-in queries never pay.
    """
    requested = str(requested)
    if requested != "auto" and requested != "cpu" and not requested.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got '{requested}'")
    if requested == "cpu" or (requested == "auto" and not needs_torch):
        return "cpu"
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise RuntimeError(f"device '{requested}' requested but CUDA is not available")
    return requested
