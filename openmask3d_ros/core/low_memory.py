"""Model weights held once in memory, and freed memory handed back (issue 22, item 1).

Loading a checkpoint the plain way holds the weights twice at the peak: the model is built (with
random initial weights) and the file's state dict is read beside it, then copied in. Here:

* the file is read memory-mapped (``torch.load(mmap=True)``, for torch's zip format) and its
  tensors become the model's own (``load_state_dict(assign=True)``): the built model's initial
  weights are freed and the weights exist once, as pages of the checkpoint file that are read
  when first used. Weights a run never touches (CLIP's text tower during ``openmask3d run``) are
  never read into memory; the kernel may drop clean file pages under pressure and read them
  again. Where a checkpoint tensor's dtype differs from the model's (e.g. OpenAI's fp16
  TorchScript CLIP files) the state dict is copied in as before, converting the dtype.
  The weights are the same values either way (test/test_low_memory.py).
* ``release_freed()`` returns memory the C allocator keeps after large frees (glibc
  ``malloc_trim``), so a freed model copy does not stay resident.

The mapping is private (copy-on-write): replacing the checkpoint file by a new one (a download,
``mv``) does not change a loaded model; writing into the file in place while a model uses it is
not supported.

``ENABLED = False`` turns these savings and SAM's chunked attention (segmenters/sam_attention.py)
off for models built afterwards: the path before issue 22, which benchmarks/bench_memory.py runs
as its baseline.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import threading
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

ENABLED = True
_lock = threading.Lock()


def read_state_dict(path: str | Path, weights_only: bool = True):
    """``torch.load`` of a checkpoint on the CPU, memory-mapped where the format allows."""
    import torch

    if ENABLED and zipfile.is_zipfile(path):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError:       # e.g. a TorchScript archive or an old format: read it whole
            pass
    return torch.load(str(path), map_location="cpu", weights_only=weights_only)


def load_weights(model, state: dict, strict: bool = True):
    """``model.load_state_dict(state, strict)``, taking the state's tensors as the model's own
    (no copy) when ``ENABLED`` and every tensor has the dtype of the one it replaces."""
    assign = ENABLED and _same_dtypes(model, state)
    return model.load_state_dict(state, strict=strict, assign=assign)


def _same_dtypes(model, state: dict) -> bool:
    import torch

    own = model.state_dict(keep_vars=True)
    return all(isinstance(v, torch.Tensor) and k in own and v.dtype == own[k].dtype
               and v.device == own[k].device for k, v in state.items())


@contextlib.contextmanager
def open_clip_loading():
    """Within: open_clip's ``create_model*`` reads a state-dict checkpoint memory-mapped and
    takes its tensors as the model's weights (``load_weights``). TorchScript and safetensors
    files go through open_clip's own reader; open_clip's conversions all still apply."""
    if not ENABLED:
        yield
        return
    import open_clip.factory as factory

    with _lock:
        original_checkpoint, original_read = factory.load_checkpoint, factory.load_state_dict

        def read(checkpoint_path, device="cpu", weights_only=True):
            path = str(checkpoint_path)
            if path.endswith(".safetensors") or not weights_only or device != "cpu":
                return original_read(checkpoint_path, device=device, weights_only=weights_only)
            checkpoint = read_state_dict(path, weights_only=True)
            # as open_clip.factory.load_state_dict does after torch.load
            if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
                checkpoint = checkpoint["state_dict"]
            if not checkpoint:             # open_clip fails here too (StopIteration)
                raise ValueError("the file holds no weights")
            if next(iter(checkpoint)).startswith("module"):
                checkpoint = {k[7:]: v for k, v in checkpoint.items()}
            return checkpoint

        def load_checkpoint(model, checkpoint_path, *args, **kwargs):
            model.load_state_dict = functools.partial(_assigning, model)
            try:
                return original_checkpoint(model, checkpoint_path, *args, **kwargs)
            finally:
                del model.load_state_dict

        factory.load_checkpoint, factory.load_state_dict = load_checkpoint, read
        try:
            yield
        finally:
            factory.load_checkpoint, factory.load_state_dict = original_checkpoint, original_read


def _assigning(model, state: dict, strict: bool = True):
    """``load_weights`` through the class's ``load_state_dict`` (the instance's is this one)."""
    assign = _same_dtypes(model, state)
    return type(model).load_state_dict(model, state, strict=strict, assign=assign)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, looked up once (it runs before every SAM block), or None."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed() -> None:
    """Hand memory freed by the C allocator back to the system (glibc; elsewhere nothing)."""
    trim = _malloc_trim() if ENABLED else None
    if trim is not None:
        trim(0)


def resident_mib() -> int:
    """This process's resident memory (VmRSS) in MiB; 0 where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
