"""Pipeline configuration: every parameter with the paper's default, loadable from YAML.

The same YAML file serves the ROS node and the offline CLI: it may be a ROS 2 parameter file
(``<node>: {ros__parameters: {...}}``) or a plain mapping. Keys are dotted section names
(``visibility.k_threshold``) or nested mappings; unknown keys are an error that names the key.
The comments beside a field (and full-line comments right above it) are its description: the
node's ``pipeline.*`` parameter descriptions and config/openmask3d.yaml are generated from them
(core/config_docs.py; regenerate the YAML with ``openmask3d params -o config/openmask3d.yaml``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import yaml

from .errors import InputError
from .fidelity import Fidelity


@dataclass
class ProposalConfig:
    backend: str = "geometric"           # geometric | mask3d | precomputed
    masks_file: str = ""                 # precomputed P x M masks (.npy / official .pt)
    dbscan_eps: float = 0.95             # paper A.1
    dbscan_min_points: int = 1           # official Mask3D inference setting
    min_mask_points: int = 20            # parts smaller than this after DBSCAN are dropped
    # geometric (training-free) backend
    voxel_size: float = 0.01
    plane_distance: float = 0.012
    plane_min_fraction: float = 0.08
    max_planes: int = 4
    cluster_eps: float = 0.025
    cluster_min_points: int = 30
    # Mask3D backend (issue "Mask3D")
    mask3d_checkpoint: str = ""
    mask3d_num_queries: int = 150
    mask3d_voxel_size: float = 0.02
    mask3d_mask_threshold: float = 0.0   # logits > 0, as the official inference


@dataclass
class VisibilityConfig:
    k_threshold: float = 0.2             # m, a point is occluded when w - d > k_threshold
    k_view: int = 5                      # top views per mask
    min_visible_points: int = 1          # a view must see at least this many points (official: pixels)
    two_sided: bool = True               # occluded when |d - w| > k (official); false: w - d > k
    share_fraction: float = 0.0          # opt-in (core/view_sharing.py): prefer frames other
                                         # masks chose when within this fraction; 0 = paper top-k


@dataclass
class SegmenterConfig:
    backend: str = "hull"                # hull (stand-in) | sam
    k_rounds: int = 10
    k_sample: int = 5
    min_score: float = 0.0               # best round must score above this, else box fallback
    # official fidelity's prompt draws: per_view = a random stream per (mask, frame) from
    # [seed, mask, frame] (a rebuild redoes changed views only) | stream = one stream over all
    # masks, the draws of the official code after np.random.seed(seed) (it seeds none; a changed
    # view redraws every later mask on a rebuild)
    prompt_seeding: str = "per_view"
    sam_model: str = "vit_h"
    sam_checkpoint: str = ""
    # speed (core/segmenters/sam.py); the defaults keep the paper's results
    prompt_batch: int = 0                # prompts a decoder call, 0 = auto (GPU 512, CPU 1)
    early_stop_iou: float = 0.0          # opt-in: stop a mask's rounds at this predicted IoU
    precision: str = "fp32"              # fp32 | bf16 (CPU/GPU) | fp16 (GPU), opt-in
    quantize: bool = False               # opt-in: dynamic int8 decoder (CPU)


@dataclass
class CropConfig:
    levels: int = 3                      # L
    k_exp: float = 0.1                   # expansion ratio per level


@dataclass
class EncoderConfig:
    backend: str = "colour"              # colour (stand-in) | clip
    clip_model: str = "ViT-L-14-336"
    clip_checkpoint: str = ""
    batch_size: int = 64
    # class-name prompt for closed-vocabulary evaluation (the paper's), recorded in every map;
    # free-text queries use query.prompt_template
    prompt_template: str = "a {} in a scene"
    text_cache_size: int = 1024
    preprocess: str = "tensor"           # tensor (batched, on the device) | pil (open_clip's)
    precision: str = "auto"              # auto (fp16 autocast on GPU, fp32 on CPU) | fp32 |
                                         # bf16 | fp16 (GPU)
    quantize: bool = False               # opt-in: dynamic int8 image tower (CPU)


@dataclass
class QueryConfig:
    """Relevance of instances to a query (LERF-style, see core/relevance.py)."""
    # canonical negatives: relevance = min over these of softmax over {query, negative}
    negatives: list = field(default_factory=lambda: ["object", "things", "stuff", "texture"])
    temperature: float = 10.0            # similarities are multiplied by this before the softmax
    prompt_template: str = "{}"          # applied to the query text and to every negative
    min_relevance: float = 0.55          # default threshold of "found" (0.5 = like a generic thing)
    # largest query image (a file, a service request) accepted, in pixels (4096 x 4096); checked
    # before decoding, larger ones are refused (core/query_image.py)
    max_image_pixels: int = 16_777_216
    # parse "<target> <relation> <reference>" and "the largest <target>" (docs/ros.md grammar)
    relations: bool = True
    near_radius: float = 0.5             # m, closest points of "near" / "next to" / "beside"


@dataclass
class GeometryConfig:
    """Oriented boxes and support surfaces of every instance, computed once per map."""
    up_axis: str = "+z"                  # map frame axis that points up (REP-103: +z) | -z | +y ...
    box_mode: str = "yaw"                # yaw (rotated about up only) | full (PCA, 3D)
    contact_distance: float = 0.05       # m, resting contact: support, "on", "in", "under"


@dataclass
class StructureConfig:
    """Which instances are scene structure (floor, walls, table tops) rather than objects."""
    plane_max_thickness: float = 0.02    # m, std of the points along the plane normal
    plane_min_area: float = 0.5          # m^2 of occupied plane cells
    cell_size: float = 0.05              # m, grid for the occupied-area estimate
    span_fraction: float = 0.6           # spans this much of the scene along 2 of 3 axes ...
    span_min_extent: float = 1.0         # ... counting only axes where the scene is this long (m)
    # a query naming one of these asks for structure too
    words: list = field(default_factory=lambda: [
        "floor", "ground", "wall", "ceiling", "table", "tabletop", "desk", "counter",
        "countertop", "worktop", "surface"])


@dataclass
class CacheConfig:
    """Reuse of a previous build's work (core/build_cache.py), kept in MAP/cache/."""
    enabled: bool = True                 # rebuilds reuse what did not change (exact: same map)
    max_size_mb: int = 2048              # MiB on disk; least recently used entries go beyond it


@dataclass
class ChangesConfig:
    """What changed since the previous map (core/changes.py): added, removed, moved, unchanged."""
    enabled: bool = True                 # compare each new map with the one it replaces
    voxel_size: float = 0.05             # m, the distance at which two points coincide
    min_overlap: float = 0.5             # fraction of an instance's points coinciding (aligned)
    min_similarity: float = 0.75         # feature cosine of the same object in both maps
    min_move: float = 0.05               # m, a smaller displacement counts as unchanged
    size_tolerance: float = 0.3          # a moved object's extents may differ by this fraction


@dataclass
class PipelineConfig:
    frame_step: int = 10                 # keep every n-th frame
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    threads: int = 0                     # CPU threads, 0 = cores - 1 (env OPENMASK3D_THREADS wins)
    seed: int = 0
    fidelity: Fidelity = Fidelity.OFFICIAL  # official (the released code) | paper (its text)
    keep_generations: int = 3            # map generations kept on disk (the newest ones)
    # a larger input cloud is thinned on a voxel grid to at most this many points before the
    # build (core/cloud_cap.py; the map keeps their indices into the input), 0 = no cap
    max_cloud_points: int = 1000000
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    visibility: VisibilityConfig = field(default_factory=VisibilityConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    structure: StructureConfig = field(default_factory=StructureConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    changes: ChangesConfig = field(default_factory=ChangesConfig)

    def __post_init__(self) -> None:
        self.fidelity = Fidelity.parse(self.fidelity)      # PipelineConfig(fidelity="paper") too

    def to_dict(self) -> dict[str, Any]:
        """Nested plain-dict view (for metadata and YAML): enums as their plain names."""
        return dataclasses.asdict(self, dict_factory=_plain_dict)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, the form ROS parameters take."""
        return flatten(self.to_dict())

    def validate(self, source: str | Path | None = None) -> PipelineConfig:
        """Check every value's range (``InputError`` naming key and ``source``); returns self."""
        from .config_check import validate
        validate(self.flat(), source)
        return self

    def updated(self, values: Mapping[str, Any], strict: bool = True) -> PipelineConfig:
        """Return a copy with dotted or nested ``values`` applied (type-checked)."""
        cfg = dataclasses.replace(self, **{
            f.name: dataclasses.replace(getattr(self, f.name))
            for f in dataclasses.fields(self) if dataclasses.is_dataclass(getattr(self, f.name))})
        for key, value in flatten(values).items():
            _set_field(cfg, key, value, strict)
        return cfg


def _plain_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v.value if isinstance(v, Enum) else v for k, v in pairs}


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); the
    one flattener of the package (config files, ROS parameter files, PipelineConfig.flat)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _set_field(cfg: PipelineConfig, key: str, value: Any, strict: bool) -> None:
    target: Any = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        sub = getattr(target, part, None)
        if sub is None or not dataclasses.is_dataclass(sub):
            if strict:
                raise KeyError(f"unknown configuration key '{key}'")
            return
        target = sub
    names = {f.name: f for f in dataclasses.fields(target)}
    if parts[-1] not in names:
        if strict:
            raise KeyError(f"unknown configuration key '{key}'")
        return
    current = getattr(target, parts[-1])
    if dataclasses.is_dataclass(current):
        raise ValueError(f"configuration key '{key}' is a section, not a value")
    setattr(target, parts[-1], _coerce(key, current, value))


def _coerce(key: str, current: Any, value: Any) -> Any:
    kind = type(current)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"configuration key '{key}' expects true/false, got {value!r}")
    if issubclass(kind, Enum):
        if isinstance(value, str) and value in kind._value2member_map_:
            return kind(value)
        raise ValueError(f"configuration key '{key}' must be one of "
                         f"{', '.join(m.value for m in kind)}, got {value!r}")
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    if kind is list and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    what = "a list of strings" if kind is list else kind.__name__
    raise ValueError(f"configuration key '{key}' expects {what}, got {value!r}")


def pipeline_section(data: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline keys of a YAML document: ROS parameter files keep them under
    ``<node>.ros__parameters.pipeline``; plain files may hold them at the top level."""
    if len(data) == 1:
        (only,) = data.values()
        if isinstance(only, Mapping) and "ros__parameters" in only:
            data = only["ros__parameters"]
    section = data.get("pipeline", data)
    return dict(section)


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; InputError naming the file and, for a syntax error, its
    line and column."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"not a readable YAML file{where}: "
                         f"{getattr(exc, 'problem', None) or exc}", path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"not a readable YAML file: {exc}", path) from exc


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
                ) -> PipelineConfig:
    """Defaults, then the YAML file at ``path`` (if given), then ``overrides``."""
    cfg = PipelineConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        data = read_yaml(path) or {}
        if not isinstance(data, Mapping):
            raise InputError("a config file must hold a mapping", path)
        try:
            cfg = cfg.updated(pipeline_section(data)).validate(path)
        except InputError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise InputError(exc.args[0] if exc.args else str(exc), path) from exc
    if overrides:
        cfg = cfg.updated(overrides)
    return cfg.validate()
