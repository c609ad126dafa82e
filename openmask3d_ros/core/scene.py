"""The scene folder: our one on-disk format (ScanNet-like).

```
SCENE/
  color/<i>.jpg|png            RGB images
  depth/<i>.png                uint16 depth, ``depth_scale`` units per metre (default 1000 = mm)
  pose/<i>.txt                 4x4 camera-to-world
  intrinsic/intrinsic_color.txt, intrinsic/intrinsic_depth.txt   4x4 (K in the top-left 3x3)
  cloud.ply                    reconstructed cloud, xyz + rgb (ScanNet ``*_vh_clean_2.ply`` also accepted)
  scene.json                   optional: {"depth_scale": 1000.0, "keyframe_step": 10}
                               (keyframe_step: the folder holds every n-th frame of a stream, as
                               the ROS node records; the pipeline then decimates no further)
  ground_truth/                optional: instance_ids.npy (per cloud point, 0 = none), labels.json
```
Colour and depth may differ in resolution; intrinsics are rescaled, never assumed.
"""
from __future__ import annotations

import json
import os
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from plyfile import PlyData, PlyElement

from .atomic_files import replacing
from .camera import Intrinsics
from .errors import InputError

log = logging.getLogger(__name__)

COLOR_EXTS = (".jpg", ".jpeg", ".png")
DEFAULT_DEPTH_SCALE = 1000.0


class SceneError(InputError):
    """A scene folder is missing something or holds malformed data."""


def check_cloud(points, colors=None, source: str = "the cloud"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Validated (N, 3) float32 points and (N, 3) uint8 colours (grey when ``colors`` is None).

    The same rule offline and in the node: a cloud without points cannot hold a map."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3 or not np.issubdtype(pts.dtype, np.number):
        raise InputError(f"{source}: points must be an N x 3 numeric array, got shape "
                         f"{pts.shape} ({pts.dtype})")
    if len(pts) == 0:
        raise InputError(f"{source} has no points: a map needs a reconstructed cloud")
    pts = pts.astype(np.float32)
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{source} holds non-finite coordinates")
    if colors is None:
        return pts, np.full(pts.shape, 128, dtype=np.uint8)
    col = np.asarray(colors)
    if col.shape != pts.shape:
        raise InputError(f"{source}: colours have shape {col.shape}, points {pts.shape}")
    return pts, col.astype(np.uint8)


@dataclass
class GroundTruth:
    """Per-point instance ids (0 = no instance) and per-instance labels/attributes."""

    instance_ids: np.ndarray
    labels: dict[int, dict]

    def label(self, instance_id: int) -> str:
        return self.labels[instance_id]["label"]


def _frame_key(path: Path):
    stem = path.stem
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def read_matrix(path: Path, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """Read a whitespace-separated matrix file, checking its shape and finiteness."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # an empty file: reported below by shape
            M = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except Exception as exc:      # OSError, ValueError, decoding errors of a damaged file
        raise SceneError(f"cannot read matrix {path}: {exc}", path) from exc
    if M.shape != shape:
        raise SceneError(f"{path}: expected a {shape[0]}x{shape[1]} matrix, got {M.shape}")
    return M


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 3) float32 and colours (N, 3) uint8 (grey if the file has none)."""
    try:
        vertex = PlyData.read(str(path))["vertex"]
        names = vertex.data.dtype.names or ()
        missing = [c for c in "xyz" if c not in names]
        if missing:
            raise SceneError(f"{path}: the vertex element has no {', '.join(missing)} property",
                             path, "vertex")
        points = np.stack([np.asarray(vertex[c], dtype=np.float32) for c in "xyz"], axis=1)
        if all(c in names for c in ("red", "green", "blue")):
            colors = np.stack([np.asarray(vertex[c]) for c in ("red", "green", "blue")],
                              axis=1).astype(np.uint8)
        else:
            colors = np.full_like(points, 128, dtype=np.uint8)
    except SceneError:
        raise
    except Exception as exc:      # plyfile parse errors (truncated file, bad header), OSError
        raise SceneError(f"cannot read point cloud {path}: {exc} ({type(exc).__name__})",
                         path) from exc
    if not np.all(np.isfinite(points)):
        raise SceneError(f"{path}: point cloud holds non-finite coordinates", path)
    return points, colors


# Trailers that complete files end with: a truncated file is unreadable even when a decoder
# returns a partly grey image (libjpeg only warns).
_PNG_MAGIC, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
_JPEG_MAGIC, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


def read_image(path: Path, flags: int = cv2.IMREAD_UNCHANGED, what: str = "image") -> np.ndarray:
    """Decode a complete PNG/JPEG (or other OpenCV format); ``SceneError`` when unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SceneError(f"cannot read {what} {path}: {exc.strerror or exc}", path) from exc
    if data.startswith(_PNG_MAGIC) and not data.rstrip(b"\x00").endswith(_PNG_END):
        raise SceneError(f"{what} {path} is truncated (no PNG end chunk)", path)
    if data.startswith(_JPEG_MAGIC) and _JPEG_END not in data[-64:]:
        raise SceneError(f"{what} {path} is truncated (no JPEG end marker)", path)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if img is None or img.size == 0:
        raise SceneError(f"cannot decode {what} {path}", path)
    return img


def write_ply(path: Path, points: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Binary little-endian PLY with xyz float32 and optional uint8 rgb."""
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    data = np.empty(len(points), dtype=fields)
    for i, c in enumerate("xyz"):
        data[c] = points[:, i]
    if colors is not None:
        for i, c in enumerate(("red", "green", "blue")):
            data[c] = colors[:, i]
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))


def replace_ply(path: Path, points: np.ndarray, colors: np.ndarray | None = None) -> None:
    """``write_ply`` crash-safely: a temporary file in the same folder, then ``os.replace``, so
    a reader (or a restarted node) sees the old cloud or the new one, never half of one."""
    path = Path(path)
    with replacing(path, path.with_name(f".{path.name}.{os.getpid()}.tmp")) as tmp:
        write_ply(tmp, points, colors)


class SceneFolder:
    """Read access to a scene folder; frames are loaded lazily, one at a time."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SceneError(f"scene folder not found: {self.root}")
        meta_path = self.root / "scene.json"
        self.meta = read_scene_json(meta_path) if meta_path.is_file() else {}
        try:
            self.depth_scale = float(self.meta.get("depth_scale", DEFAULT_DEPTH_SCALE))
        except (TypeError, ValueError) as exc:
            raise SceneError(f"{meta_path}: depth_scale must be a number, got "
                             f"{self.meta.get('depth_scale')!r}", meta_path, "depth_scale") from exc
        if not np.isfinite(self.depth_scale) or self.depth_scale <= 0:
            raise SceneError(f"{meta_path}: depth_scale must be positive", meta_path, "depth_scale")
        step = self.meta.get("keyframe_step")
        if step is not None and (not isinstance(step, int) or step < 1):
            raise SceneError(f"{meta_path}: keyframe_step must be an integer >= 1, got {step!r}")
        # None: a full stream (the pipeline keeps every frame_step-th frame).
        self.keyframe_step: int | None = step
        self._color_paths = self._index("color", COLOR_EXTS)
        self._depth_paths = self._index("depth", (".png",))
        self._pose_paths = self._index("pose", (".txt",))
        common = set(self._color_paths) & set(self._depth_paths) & set(self._pose_paths)
        for name, paths in (("color", self._color_paths), ("depth", self._depth_paths),
                            ("pose", self._pose_paths)):
            missing = sorted(set(paths) - common)
            if missing:
                log.warning("%s: %d %s file(s) without a matching color/depth/pose triple "
                            "(e.g. %s) are ignored", self.root, len(missing), name, missing[0])
        self.frame_ids = sorted(common, key=lambda s: _frame_key(Path(s)))
        self._intrinsics: dict[str, Intrinsics] = {}

    def _index(self, sub: str, exts: tuple[str, ...]) -> dict[str, Path]:
        folder = self.root / sub
        if not folder.is_dir():
            return {}
        return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in exts}

    # -- intrinsics ---------------------------------------------------------------------------
    def _intrinsics_for(self, kind: str, image_path: Path) -> Intrinsics:
        if kind not in self._intrinsics:
            path = self.root / "intrinsic" / f"intrinsic_{kind}.txt"
            other = self.root / "intrinsic" / ("intrinsic_color.txt" if kind == "depth"
                                               else "intrinsic_depth.txt")
            src = path if path.is_file() else other
            if not src.is_file():
                raise SceneError(f"{self.root}/intrinsic: neither intrinsic_color.txt nor "
                                 "intrinsic_depth.txt exists")
            h, w = self._first_size(kind)
            K = read_matrix(src)
            try:
                if src is other:
                    # Only the other camera's matrix exists: rescale it to this image's size,
                    # using that camera's image size.
                    other_kind = "color" if kind == "depth" else "depth"
                    oh, ow = self._first_size(other_kind)
                    self._intrinsics[kind] = Intrinsics(K, ow, oh).scaled(w, h)
                else:
                    self._intrinsics[kind] = check_principal_point(Intrinsics(K, w, h), src, kind)
            except SceneError:
                raise
            except ValueError as exc:
                raise SceneError(f"{src}: {exc}", src) from exc
        return self._intrinsics[kind]

    def _first_size(self, kind: str) -> tuple[int, int]:
        """(height, width) of the first readable image of ``kind`` among the frames."""
        paths = self._color_paths if kind == "color" else self._depth_paths
        ids = [f for f in self.frame_ids if f in paths] or sorted(paths, key=lambda s: _frame_key(
            Path(s)))
        if not ids:
            raise SceneError(f"{self.root}: no {kind} images")
        errors = []
        for fid in ids:
            try:
                return _image_size(paths[fid])
            except SceneError as exc:
                errors.append(str(exc))
        raise SceneError(f"{self.root}: none of the {len(ids)} {kind} images can be read "
                         f"({errors[0]})", self.root / kind)

    def color_intrinsics(self) -> Intrinsics:
        return self._intrinsics_for("color", self._color_paths[self._first()])

    def depth_intrinsics(self) -> Intrinsics:
        return self._intrinsics_for("depth", self._depth_paths[self._first()])

    def _first(self) -> str:
        if not self.frame_ids:
            raise SceneError(f"{self.root}: no frames (need color/, depth/ and pose/ files "
                             "with matching names)")
        return self.frame_ids[0]

    # -- frames -------------------------------------------------------------------------------
    def color(self, fid: str) -> np.ndarray:
        """RGB uint8 (H, W, 3)."""
        img = read_image(self._color_paths[fid], cv2.IMREAD_COLOR, "color image")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def depth(self, fid: str) -> np.ndarray:
        """Depth in metres, float32 (H, W); 0 where invalid."""
        path = self._depth_paths[fid]
        raw = read_image(path, cv2.IMREAD_UNCHANGED, "depth image")
        if raw.ndim != 2 or raw.dtype != np.uint16:
            raise SceneError(f"{path}: depth must be a single-channel uint16 PNG, got "
                             f"{raw.dtype} with shape {raw.shape}")
        return raw.astype(np.float32) / np.float32(self.depth_scale)

    def pose(self, fid: str) -> np.ndarray:
        """Camera-to-world 4x4 (may be non-finite: ScanNet marks lost tracking with -inf)."""
        return read_matrix(self._pose_paths[fid])

    def color_path(self, fid: str) -> Path:
        return self._color_paths[fid]

    def frame_files(self, fid: str) -> tuple[Path, Path, Path]:
        """(color, depth, pose) files of a frame."""
        return self._color_paths[fid], self._depth_paths[fid], self._pose_paths[fid]

    # -- cloud and ground truth -----------------------------------------------------------------
    @property
    def cloud_path(self) -> Path:
        path = self.root / "cloud.ply"
        if path.is_file():
            return path
        plys = sorted(self.root.glob("*_vh_clean_2.ply")) or sorted(self.root.glob("*.ply"))
        if not plys:
            raise SceneError(f"{self.root}: no cloud.ply")
        return plys[0]

    def cloud(self) -> tuple[np.ndarray, np.ndarray]:
        return read_ply(self.cloud_path)

    def ground_truth(self) -> GroundTruth | None:
        folder = self.root / "ground_truth"
        if not (folder / "instance_ids.npy").is_file():
            return None
        try:
            ids = np.load(folder / "instance_ids.npy", allow_pickle=False)
        except Exception as exc:
            raise SceneError(f"cannot read {folder / 'instance_ids.npy'}: {exc}",
                             folder / "instance_ids.npy") from exc
        labels = read_scene_json(folder / "labels.json")
        try:
            return GroundTruth(ids, {int(k): v for k, v in labels.items()})
        except ValueError as exc:
            raise SceneError(f"{folder / 'labels.json'}: keys must be instance ids ({exc})",
                             folder / "labels.json") from exc


def read_scene_json(path: Path) -> dict:
    """A JSON object from the scene folder; ``SceneError`` naming the file otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SceneError(f"cannot read {path}: {exc}", path) from exc
    if not isinstance(data, dict):
        raise SceneError(f"{path}: expected a JSON object, got {type(data).__name__}", path)
    return data


def check_principal_point(K: Intrinsics, src: Path | str, kind: str) -> Intrinsics:
    """A matrix whose principal point lies far from the image centre is for another resolution
    (e.g. a full-size intrinsic_depth.txt beside half-size depth images, or a camera_info whose
    K is for another size than its width and height). ``src`` names where K came from."""
    cx, cy = K.K[0, 2], K.K[1, 2]
    if not (0.3 * K.width <= cx <= 0.7 * K.width and 0.3 * K.height <= cy <= 0.7 * K.height):
        raise SceneError(f"{src}: principal point ({cx:.1f}, {cy:.1f}) does not fit the "
                         f"{K.width}x{K.height} {kind} images (it should lie near their centre, "
                         f"({K.width / 2:.0f}, {K.height / 2:.0f})): the matrix is for another "
                         "resolution", src)
    return K


def _image_size(path: Path) -> tuple[int, int]:
    img = read_image(path)
    return img.shape[0], img.shape[1]


class SceneWriter:
    """Create a scene folder frame by frame (used by the synthetic generator and the ROS node)."""

    def __init__(self, root: str | Path, depth_scale: float = DEFAULT_DEPTH_SCALE,
                 color_ext: str = ".png"):
        self.root = Path(root)
        for sub in ("color", "depth", "pose", "intrinsic"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.depth_scale = float(depth_scale)
        self.color_ext = color_ext
        meta_path = self.root / "scene.json"
        meta = read_scene_json(meta_path) if meta_path.is_file() else {}
        meta["depth_scale"] = self.depth_scale
        meta_path.write_text(json.dumps(meta, indent=2))

    def write_keyframe_step(self, step: int) -> None:
        """Mark the folder as holding every ``step``-th frame of a stream (scene.json)."""
        meta_path = self.root / "scene.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta["keyframe_step"] = int(step)
        meta_path.write_text(json.dumps(meta, indent=2))

    def write_intrinsics(self, color: Intrinsics, depth: Intrinsics | None = None) -> None:
        np.savetxt(self.root / "intrinsic" / "intrinsic_color.txt", color.as_4x4(), fmt="%.6f")
        np.savetxt(self.root / "intrinsic" / "intrinsic_depth.txt",
                   (depth or color).as_4x4(), fmt="%.6f")

    def write_frame(self, index: int, color_rgb: np.ndarray, depth_m: np.ndarray,
                    cam_to_world: np.ndarray) -> None:
        """Write one frame atomically enough that a crash never leaves a half triple behind:
        pose is written last, and a frame counts only when all three files exist."""
        name = str(index)
        cv2.imwrite(str(self.root / "color" / f"{name}{self.color_ext}"),
                    cv2.cvtColor(np.ascontiguousarray(color_rgb), cv2.COLOR_RGB2BGR))
        d = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        raw = np.clip(np.round(d * self.depth_scale), 0, 65535).astype(np.uint16)
        cv2.imwrite(str(self.root / "depth" / f"{name}.png"), raw)
        tmp = self.root / "pose" / f".{name}.tmp"
        np.savetxt(tmp, np.asarray(cam_to_world, dtype=np.float64), fmt="%.8f")
        tmp.rename(self.root / "pose" / f"{name}.txt")

    def write_cloud(self, points: np.ndarray, colors: np.ndarray | None) -> None:
        replace_ply(self.root / "cloud.ply", points, colors)

    def write_ground_truth(self, instance_ids: np.ndarray, labels: dict[int, dict]) -> None:
        folder = self.root / "ground_truth"
        folder.mkdir(exist_ok=True)
        np.save(folder / "instance_ids.npy", np.asarray(instance_ids, dtype=np.int32))
        (folder / "labels.json").write_text(json.dumps({str(k): v for k, v in labels.items()},
                                                       indent=2))
