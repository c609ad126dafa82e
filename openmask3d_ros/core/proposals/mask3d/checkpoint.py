"""Loading the released Mask3D checkpoint (``scannet200_val.ckpt`` / ``scannet200_benchmark.ckpt``).

The file is a PyTorch-Lightning checkpoint of OpenMask3D's / Mask3D's ``InstanceSegmentation``
module: ``ckpt["state_dict"]`` holds the network under the prefix ``model.`` (the Lightning
module's ``self.model``) next to training-only buffers such as ``criterion.empty_weight``, and
``ckpt["hyper_parameters"]`` holds the hydra config as OmegaConf objects.

How the expected keys were derived (``official_state_dict_shapes`` below, written by hand,
independently of ``model.py``): by reading the official sources models/mask3d.py,
models/res16unet.py, models/resnet.py, models/modules/common.py,
models/modules/resnet_block.py, models/modules/3detr_helpers.py, models/position_embedding.py,
conf/model/mask3d.yaml (JonasSchult/Mask3D) and OpenMask3D's
class_agnostic_mask_computation/{conf,trainer,datasets} with the ScanNet200 overrides
(general.num_targets=201, data.num_labels=200, data.in_channels=3), together with
MinkowskiEngine 0.5.4's parameter layout (a convolution ``kernel`` is
(kernel_volume, C_in, C_out), or (C_in, C_out) when the volume is 1; ``bias`` is (1, C_out);
``MinkowskiBatchNorm`` wraps ``torch.nn.BatchNorm1d`` as ``.bn``). A third-party inspection of
the released file (a public repository's tests) reports ``model.backbone.conv0p1s1.kernel``
(125, 3, 32), ``backbone.final.kernel`` (96, 200), ``class_embed_head.weight`` (201, 128), and
kernel volumes 125 x1, 27 x46, 8 x8; the derivation agrees with all of these (see the tests).
"""
from __future__ import annotations

import io
import logging
import pickle
import types
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CHECKPOINT_HELP = (
    "Download the ScanNet200 Mask3D checkpoint named in the OpenMask3D README "
    "(https://github.com/OpenMask3D/openmask3d#downloading-the-checkpoints: "
    "scannet200_model.ckpt, i.e. Mask3D's scannet200_val.ckpt) and set "
    "proposals.mask3d_checkpoint to its path.")


# ----------------------------------------------------------------------------- expected keys

def _me_kernel(volume: int, c_in: int, c_out: int) -> tuple[int, ...]:
    return (volume, c_in, c_out) if volume > 1 else (c_in, c_out)


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.bn.weight": (c,), f"{prefix}.bn.bias": (c,),
            f"{prefix}.bn.running_mean": (c,), f"{prefix}.bn.running_var": (c,),
            f"{prefix}.bn.num_batches_tracked": ()}


# Res16UNet34C (models/res16unet.py): block widths and BasicBlock counts of the four encoder and
# four decoder stages, and the stem width.
RES16UNET34C_PLANES = (32, 64, 128, 256, 256, 128, 96, 96)
RES16UNET34C_LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)
RES16UNET34C_INIT_DIM = 32
# (kernel-2 stride-2 convolution, its norm) in front of each encoder / decoder stage
_DOWN_CONVS = (("conv1p1s2", "bn1"), ("conv2p2s2", "bn2"), ("conv3p4s2", "bn3"),
               ("conv4p8s2", "bn4"))
_UP_CONVS = (("convtr4p16s2", "bntr4"), ("convtr5p8s2", "bntr5"), ("convtr6p4s2", "bntr6"),
             ("convtr7p2s2", "bntr7"))


def official_state_dict_shapes(num_classes: int = 201, out_channels: int = 200,
                               in_channels: int = 3, hidden_dim: int = 128,
                               dim_feedforward: int = 1024, num_levels: int = 4,
                               num_decoders_stored: int = 1) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official Mask3D network (no ``model.`` prefix), ScanNet200 setup.

    Res16UNet34C: PLANES (32, 64, 128, 256, 256, 128, 96, 96), LAYERS (2, 3, 4, 6, 2, 2, 2, 2),
    INIT_DIM 32, conv1_kernel_size 5, BasicBlock (expansion 1) with a 1x1x1 ``downsample``
    whenever the input width differs from the block width. Decoder: shared (one stored copy),
    hlevels [0, 1, 2, 3] reading feature maps of widths PLANES[-5:] = (256, 256, 128, 96, 96).
    """
    return {**_backbone_shapes(in_channels, out_channels),
            **_head_shapes(num_classes, hidden_dim),
            **_decoder_shapes(hidden_dim, dim_feedforward, num_levels, num_decoders_stored)}


def _basic_blocks(prefix: str, inplanes: int, width: int, n: int) -> dict[str, tuple[int, ...]]:
    """``n`` BasicBlocks of ``width`` under ``prefix``, the first reading ``inplanes`` channels."""
    s: dict[str, tuple[int, ...]] = {}
    for j in range(n):
        p = f"{prefix}.{j}"
        c_in = inplanes if j == 0 else width
        s[f"{p}.conv1.kernel"] = _me_kernel(27, c_in, width)
        s.update(_bn(f"{p}.norm1", width))
        s[f"{p}.conv2.kernel"] = _me_kernel(27, width, width)
        s.update(_bn(f"{p}.norm2", width))
        if j == 0 and inplanes != width:
            s[f"{p}.downsample.0.kernel"] = _me_kernel(1, inplanes, width)
            s.update(_bn(f"{p}.downsample.1", width))
    return s


def _backbone_shapes(in_channels: int, out_channels: int) -> dict[str, tuple[int, ...]]:
    """The Res16UNet34C backbone's keys (``backbone.``)."""
    planes, layers, init = RES16UNET34C_PLANES, RES16UNET34C_LAYERS, RES16UNET34C_INIT_DIM
    b = "backbone"
    s = {f"{b}.conv0p1s1.kernel": _me_kernel(125, in_channels, init), **_bn(f"{b}.bn0", init)}
    c = init
    for stage, (conv, bn) in enumerate(_DOWN_CONVS):
        s[f"{b}.{conv}.kernel"] = _me_kernel(8, c, c)
        s.update(_bn(f"{b}.{bn}", c))
        s.update(_basic_blocks(f"{b}.block{stage + 1}", c, planes[stage], layers[stage]))
        c = planes[stage]
    skips = (planes[2], planes[1], planes[0], init)   # encoder widths concatenated on the way up
    for stage, (conv, bn) in enumerate(_UP_CONVS):
        width = planes[4 + stage]
        s[f"{b}.{conv}.kernel"] = _me_kernel(8, c, width)
        s.update(_bn(f"{b}.{bn}", width))
        s.update(_basic_blocks(f"{b}.block{stage + 5}", width + skips[stage], width,
                               layers[4 + stage]))
        c = width
    s[f"{b}.final.kernel"] = _me_kernel(1, planes[7], out_channels)
    s[f"{b}.final.bias"] = (1, out_channels)
    return s


def _head_shapes(num_classes: int, d: int) -> dict[str, tuple[int, ...]]:
    """Mask-feature, query-projection, mask- and class-embedding heads, positional encoding."""
    s: dict[str, tuple[int, ...]] = {}
    s["mask_features_head.kernel"] = _me_kernel(1, RES16UNET34C_PLANES[7], d)
    s["mask_features_head.bias"] = (1, d)
    for i in (0, 2):
        s[f"query_projection.layers.{i}.weight"] = (d, d, 1)
        s[f"query_projection.layers.{i}.bias"] = (d,)
        s[f"mask_embed_head.{i}.weight"] = (d, d)
        s[f"mask_embed_head.{i}.bias"] = (d,)
    s["class_embed_head.weight"] = (num_classes, d)
    s["class_embed_head.bias"] = (num_classes,)
    s["pos_enc.gauss_B"] = (3, d // 2)
    return s


def _decoder_shapes(d: int, dim_feedforward: int, num_levels: int,
                    num_decoders_stored: int) -> dict[str, tuple[int, ...]]:
    """Transformer decoder: cross-/self-attention, FFN and feature squeeze per stored decoder
    and level, then the final norm."""
    s: dict[str, tuple[int, ...]] = {}
    sizes = RES16UNET34C_PLANES[-5:]
    for k in range(num_decoders_stored):
        for i in range(num_levels):
            for mod, attn in (("cross_attention", "multihead_attn"),
                              ("self_attention", "self_attn")):
                p = f"{mod}.{k}.{i}"
                s[f"{p}.{attn}.in_proj_weight"] = (3 * d, d)
                s[f"{p}.{attn}.in_proj_bias"] = (3 * d,)
                s[f"{p}.{attn}.out_proj.weight"] = (d, d)
                s[f"{p}.{attn}.out_proj.bias"] = (d,)
                s[f"{p}.norm.weight"] = (d,)
                s[f"{p}.norm.bias"] = (d,)
            p = f"ffn_attention.{k}.{i}"
            s[f"{p}.linear1.weight"] = (dim_feedforward, d)
            s[f"{p}.linear1.bias"] = (dim_feedforward,)
            s[f"{p}.linear2.weight"] = (d, dim_feedforward)
            s[f"{p}.linear2.bias"] = (d,)
            s[f"{p}.norm.weight"] = (d,)
            s[f"{p}.norm.bias"] = (d,)
            s[f"lin_squeeze.{k}.{i}.weight"] = (d, sizes[i])
            s[f"lin_squeeze.{k}.{i}.bias"] = (d,)
    s["decoder_norm.weight"] = (d,)
    s["decoder_norm.bias"] = (d,)
    return s


# ------------------------------------------------------------------------------ file reading

class _Stub:
    """Stand-in for classes the checkpoint pickles but inference does not need (OmegaConf
    configs in ``hyper_parameters``, Lightning callbacks' state)."""

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        self._state = state

    def __call__(self, *args, **kwargs):   # pickled functions/factories become stubs too
        return _Stub(*args, **kwargs)


class _TolerantUnpickler(pickle.Unpickler):
    """Resolves torch/numpy/stdlib containers normally and replaces anything else by _Stub,
    so that a Lightning checkpoint loads without omegaconf/pytorch_lightning installed and
    without executing foreign callables."""

    _ALLOWED = ("torch", "collections", "numpy", "_codecs", "copyreg")

    def find_class(self, module, name):
        if module.split(".")[0] in self._ALLOWED or (
                module == "builtins" and name in {"set", "frozenset", "slice", "complex",
                                                  "bytearray", "getattr", "object"}):
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                pass
        return type(name, (_Stub,), {"__module__": f"stub.{module}"})


_tolerant_pickle = types.SimpleNamespace(Unpickler=_TolerantUnpickler, load=pickle.load,
                                         loads=pickle.loads, Pickler=pickle.Pickler,
                                         dump=pickle.dump, __name__="tolerant_pickle")


def require_file(path: str | Path) -> Path:
    """``path`` as a Path; FileNotFoundError naming it and where to get it when it is missing."""
    if not str(path) or not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"Mask3D checkpoint not found: '{path}'. {CHECKPOINT_HELP}")
    return Path(path).expanduser()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The network's state_dict (``model.`` prefix removed) from a Mask3D checkpoint file.

    Accepts the Lightning layout ``{"state_dict": {"model.<key>": tensor, ...}, ...}`` and a
    bare state_dict with or without the prefix. Raises FileNotFoundError (with where to get
    the file) when it is missing and ValueError when it holds no state_dict.
    """
    path = require_file(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning files pickle OmegaConf/Lightning objects besides the tensors.
        log.info("%s holds non-tensor objects; reading it with stubs for them", path)
        with open(path, "rb") as f:
            data = io.BytesIO(f.read())
        try:
            blob = torch.load(data, map_location="cpu", weights_only=False,
                              pickle_module=_tolerant_pickle)
        except Exception as exc:      # not a pickle at all (random bytes, truncated file)
            raise ValueError(f"{path} is not a readable PyTorch checkpoint ({exc})") from exc
    except Exception as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({exc})") from exc
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not state or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state_dict of tensors (expected a Mask3D Lightning "
                         f"checkpoint with a 'state_dict' entry)")
    if any(k.startswith("model.") for k in state):
        ignored = sorted(k for k in state if not k.startswith("model."))
        if ignored:
            log.debug("ignoring %d non-network checkpoint entries: %s", len(ignored),
                      ", ".join(ignored[:5]))
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    return state


def _preview(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
              ) -> None:
    """Strictly load ``state`` into ``model``; a ValueError lists missing/unexpected keys and
    shape mismatches (a few of each, with counts)."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                        for k in state if k in own and state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        parts = [f"{source} does not match the Mask3D network (ScanNet200 configuration):"]
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es) (file vs network): "
                         f"{_preview(mismatched)}")
        raise ValueError("; ".join(parts))
    model.load_state_dict(state, strict=True)


def save_lightning_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Write ``model`` in the released layout (``{"state_dict": {"model." + key: tensor}}``)."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
