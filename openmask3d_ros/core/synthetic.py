"""Synthetic posed RGB-D scenes with known instances, rendered by pybullet on the CPU.

A floor and a table carry a few ``pybullet_data`` objects (mug, duck, teddy bear, ball, tray,
cube, lego brick), each painted one distinct flat colour. A camera orbits the table and the frames
are written as a scene folder (see :mod:`openmask3d_ros.core.scene`) together with a fused 1 cm
cloud and per-point ground-truth instance ids. Everything is decided by ``seed``: the same
arguments give byte-identical files.

Camera conventions (verified by rendering small spheres at known positions):

* poses are camera-to-world in the OpenCV optical frame (x right, y down, z forward);
* TinyRenderer rasterises with a half-pixel shift against the ideal OpenGL pinhole, so in pixel
  *index* coordinates (what :func:`~openmask3d_ros.core.camera.backproject_pixels` uses) the
  principal point is ``(W/2, H/2 - 1)``, not ``((W-1)/2, (H-1)/2)``; ``fx = fy = (H/2) / tan(fov_y/2)``.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .camera import Intrinsics, backproject_pixels
from .scene import SceneWriter

log = logging.getLogger(__name__)

# Saturated, unambiguous object colours (RGB 0-255). None of them is close to the table or floor.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 190, 30),
    "blue": (20, 50, 230),
    "yellow": (240, 220, 10),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
TABLE_RGB = (150, 105, 60)   # tan/brown
FLOOR_RGB = (128, 128, 128)  # mid grey

# name -> (urdf in pybullet_data, globalScaling, base roll/pitch/yaw making it stand upright).
# Scales give each object a largest extent of about 12-18 cm.
CATALOGUE: dict[str, tuple[str, float, tuple[float, float, float]]] = {
    "mug": ("objects/mug.urdf", 1.2, (0.0, 0.0, 0.0)),
    "duck": ("duck_vhacd.urdf", 1.6, (np.pi / 2, 0.0, 0.0)),
    "teddy bear": ("teddy_vhacd.urdf", 1.8, (-np.pi / 2, 0.0, 0.0)),
    "ball": ("soccerball.urdf", 0.12, (0.0, 0.0, 0.0)),
    "tray": ("tray/traybox.urdf", 0.27, (0.0, 0.0, 0.0)),
    "cube": ("cube_small.urdf", 2.2, (0.0, 0.0, 0.0)),
    "lego brick": ("lego/lego.urdf", 4.0, (0.0, 0.0, 0.0)),
}

TABLE_URDF = "table/table.urdf"
# The table top is 1.5 x 1.0 m; objects stay this far inside its edges.
TABLE_HALF = (0.75, 0.5)
TABLE_MARGIN = 0.12
MIN_GAP = 0.06          # metres between object footprints
CROP_MARGIN = 0.3       # cloud keeps the table footprint plus this margin on each side
VOXEL = 0.01
# Grid offset: the floor (z = 0) and table top (z = 0.625) would otherwise lie on voxel
# boundaries and split into two layers.
VOXEL_OFFSET = 0.25 * VOXEL
NEAR, FAR = 0.1, 8.0
FOV_Y = 60.0
MAX_FUSED_FRAMES = 50


@dataclass
class SyntheticObject:
    """One placed object (ids are the ground-truth instance ids, 1..K)."""

    instance_id: int
    label: str
    color: str
    rgb: tuple[int, int, int]
    urdf: str
    scale: float
    position: list[float]      # world xy of the footprint centre, z of the base (table top)
    yaw: float
    size: list[float]          # axis-aligned extent after placement (m)


@dataclass
class SyntheticSceneSpec:
    """Everything the seed decided; stored under ``"synthetic"`` in scene.json."""

    seed: int
    num_frames: int
    width: int
    height: int
    depth_noise: float
    objects: list[SyntheticObject] = field(default_factory=list)
    table_id: int = 0
    floor_id: int = 0
    table_top_z: float = 0.0
    orbit_radius: float = 0.0
    orbit_height: float = 0.0
    orbit_start: float = 0.0
    fov_y: float = FOV_Y
    voxel_size: float = VOXEL
    num_points: int = 0


def _connect():
    import pybullet as p
    import pybullet_data

    cid = p.connect(p.DIRECT)
    p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=cid)
    return p, cid


def _paint(p, cid, body: int, rgb) -> None:
    """Flat colour on every visual shape of the body; textureUniqueId=-1 drops the texture."""
    rgba = [c / 255.0 for c in rgb] + [1.0]
    for shape in p.getVisualShapeData(body, physicsClientId=cid):
        p.changeVisualShape(body, shape[1], shapeIndex=-1, rgbaColor=rgba, textureUniqueId=-1,
                            physicsClientId=cid)


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world 4x4, OpenCV optical axes (x right, y down, z forward), world z up."""
    f = target - eye
    f = f / np.linalg.norm(f)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r = r / np.linalg.norm(r)
    d = np.cross(f, r)
    T = np.eye(4)
    T[:3, :3] = np.stack([r, d, f], axis=1)
    T[:3, 3] = eye
    return T


def _gl_view(cam_to_world: np.ndarray) -> list[float]:
    """pybullet's column-major OpenGL view matrix (camera looks down -z, y up) for an OpenCV pose."""
    world_to_cv = np.linalg.inv(cam_to_world)
    world_to_gl = np.diag([1.0, -1.0, -1.0, 1.0]) @ world_to_cv
    return world_to_gl.T.reshape(-1).tolist()


def tinyrenderer_intrinsics(width: int, height: int, fov_y: float = FOV_Y) -> Intrinsics:
    """Pinhole matrix matching pybullet TinyRenderer images in pixel-index coordinates."""
    f = (height / 2.0) / np.tan(np.radians(fov_y) / 2.0)
    K = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0 - 1.0], [0.0, 0.0, 1.0]])
    return Intrinsics(K, width, height)


def _place_objects(p, cid, rng: np.random.Generator, names: list[str], colors: list[str],
                   top_z: float) -> list[tuple[int, SyntheticObject]]:
    """Load, paint and place objects on the table top without overlap (rejection sampling)."""
    placed: list[tuple[int, SyntheticObject]] = []
    taken: list[tuple[float, float, float, float]] = []   # xmin, ymin, xmax, ymax
    region = np.array(TABLE_HALF) - TABLE_MARGIN
    for k, (name, color) in enumerate(zip(names, colors)):
        placed.append(_place(p, cid, rng, name, color, k + 1, region, top_z, taken, 500,
                             "on the table"))
    return placed


def _place_on_floor(p, cid, rng: np.random.Generator, twins: list[SyntheticObject],
                    first_id: int) -> list[tuple[int, SyntheticObject]]:
    """Copies of ``twins`` standing on the floor (z = 0) beside the table, inside the cropped
    cloud, clear of the table and of each other."""
    taken = [(-TABLE_HALF[0] - MIN_GAP, -TABLE_HALF[1] - MIN_GAP,
              TABLE_HALF[0] + MIN_GAP, TABLE_HALF[1] + MIN_GAP)]
    region = np.array(TABLE_HALF) + CROP_MARGIN - 0.01
    return [_place(p, cid, rng, t.label, t.color, first_id + k + 1, region, 0.0, taken, 2000,
                   "on the floor beside the table") for k, t in enumerate(twins)]


def _place(p, cid, rng: np.random.Generator, name: str, color: str, instance_id: int,
           region: np.ndarray, base_z: float, taken: list, attempts: int, where: str
           ) -> tuple[int, SyntheticObject]:
    """Load and paint one object; draw yaw and position until its footprint lies within
    +-``region`` and ``MIN_GAP`` clear of every box in ``taken`` (appended to); stand it on
    ``base_z``."""
    urdf, scale, rpy = CATALOGUE[name]
    body = p.loadURDF(urdf, [0, 0, 0], useFixedBase=True, globalScaling=scale,
                      physicsClientId=cid)
    _paint(p, cid, body, PALETTE[color])
    for _attempt in range(attempts):
        yaw = float(rng.uniform(-np.pi, np.pi))
        orn = p.getQuaternionFromEuler([rpy[0], rpy[1], yaw])
        p.resetBasePositionAndOrientation(body, [0, 0, 0], orn, physicsClientId=cid)
        lo, hi = (np.array(a) for a in p.getAABB(body, physicsClientId=cid))
        half = (hi[:2] - lo[:2]) / 2
        lim = region - half
        if np.any(lim <= 0):
            continue
        xy = rng.uniform(-lim, lim)
        box = (xy[0] - half[0], xy[1] - half[1], xy[0] + half[0], xy[1] + half[1])
        if all(box[0] > b[2] + MIN_GAP or box[2] < b[0] - MIN_GAP or
               box[1] > b[3] + MIN_GAP or box[3] < b[1] - MIN_GAP for b in taken):
            break
    else:
        raise RuntimeError(f"could not place {name} {where} without overlap")
    centre = (lo[:2] + hi[:2]) / 2
    pos = [float(xy[0] - centre[0]), float(xy[1] - centre[1]), float(base_z - lo[2])]
    p.resetBasePositionAndOrientation(body, pos, orn, physicsClientId=cid)
    taken.append(box)
    return body, SyntheticObject(
        instance_id=instance_id, label=name, color=color, rgb=PALETTE[color], urdf=urdf,
        scale=scale, position=[float(xy[0]), float(xy[1]), float(base_z)], yaw=yaw,
        size=[round(float(s), 4) for s in hi - lo])


def make_scene(out_dir, seed: int = 0, num_frames: int = 100, width: int = 320,
               height: int = 240, num_objects: int | None = None,
               depth_noise: float = 0.0, floor_objects: int = 0) -> Path:
    """Render a synthetic table-top scene into the scene folder ``out_dir`` and return its path.

    ``num_objects`` defaults to 4-6 (seed-chosen), at most 6 (one per palette colour).
    ``depth_noise`` is the standard deviation (m) of Gaussian noise added to valid depth pixels;
    the fused cloud is built from the written (noisy, mm-quantised) depth. ``floor_objects``:
    that many of the table's objects get a twin of the same kind and colour on the floor beside
    the table (ids after the table's objects; the scenes of 0, the default, are unchanged).
    Ground truth: instance ids 1..K for the objects, K+1 for the table, K+2 for the floor;
    per point in ``ground_truth/instance_ids.npy`` and per pixel in
    ``ground_truth/instance_masks/<i>.png`` (uint16, 0 = nothing). ``scene.json`` gets a
    ``"synthetic"`` entry with the seed, the objects and the camera orbit.
    A folder from an earlier run of this generator is replaced; any other non-empty folder is
    refused, so that stale frames never mix with new ones.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if width < 8 or height < 8:
        raise ValueError(f"image size too small: {width}x{height}")
    rng = np.random.default_rng(seed)
    names, colors = _choose_objects(rng, num_objects)
    _clear_previous(out)

    p, cid = _connect()
    try:
        floor, table, top_z, placed = _build_world(p, cid, rng, names, colors)
        spec = _make_spec(rng, placed, top_z, seed, num_frames, width, height, depth_noise)
        if floor_objects:       # drawn after everything else: scenes without them are unchanged
            placed += _place_on_floor(p, cid, rng, [o for _, o in placed[:floor_objects]],
                                      len(placed))
            spec.objects = [o for _, o in placed]
            spec.table_id, spec.floor_id = len(placed) + 1, len(placed) + 2
        camera = _OrbitCamera(p, cid, width, height, _instance_lut(floor, table, placed, spec))
        writer = SceneWriter(out)
        writer.write_intrinsics(camera.intr)
        parts = _render_orbit(camera, writer, out, spec, rng, num_frames, depth_noise)
        _write_cloud_and_truth(writer, out, spec, parts)
    finally:
        p.disconnect(physicsClientId=cid)
    log.info("synthetic scene %s: seed %d, %d objects (%s), %d frames %dx%d, %d cloud points, "
             "%.1f s (render %.1f s)", out, seed, len(spec.objects),
             ", ".join(f"{o.color} {o.label}" for o in spec.objects), num_frames, width, height,
             spec.num_points, time.perf_counter() - t0, camera.t_render)
    return out


def _choose_objects(rng: np.random.Generator,
                    num_objects: int | None) -> tuple[list[str], list[str]]:
    """Draw the object names and their colours (count seed-chosen 4-6 unless given)."""
    n_obj = int(rng.integers(4, 7)) if num_objects is None else int(num_objects)
    if not 1 <= n_obj <= min(len(PALETTE), len(CATALOGUE)):
        raise ValueError(f"num_objects must be in 1..{min(len(PALETTE), len(CATALOGUE))}, "
                         f"got {num_objects}")
    names = [list(CATALOGUE)[i] for i in rng.permutation(len(CATALOGUE))[:n_obj]]
    colors = [list(PALETTE)[i] for i in rng.permutation(len(PALETTE))[:n_obj]]
    return names, colors


def _build_world(p, cid, rng: np.random.Generator, names: list[str], colors: list[str]):
    """Load and paint the floor and table, place the objects: (floor, table, top_z, placed)."""
    floor = p.loadURDF("plane.urdf", physicsClientId=cid)
    _paint(p, cid, floor, FLOOR_RGB)
    table = p.loadURDF(TABLE_URDF, [0, 0, 0], useFixedBase=True, physicsClientId=cid)
    _paint(p, cid, table, TABLE_RGB)
    top_z = float(p.getAABB(table, physicsClientId=cid)[1][2])
    return floor, table, top_z, _place_objects(p, cid, rng, names, colors, top_z)


def _make_spec(rng: np.random.Generator, placed: list[tuple[int, SyntheticObject]],
               top_z: float, seed, num_frames, width, height, depth_noise) -> SyntheticSceneSpec:
    """The scene spec for the placed objects; draws the camera orbit from ``rng``."""
    K_obj = len(placed)
    return SyntheticSceneSpec(
        seed=int(seed), num_frames=int(num_frames), width=int(width), height=int(height),
        depth_noise=float(depth_noise), objects=[o for _, o in placed],
        table_id=K_obj + 1, floor_id=K_obj + 2, table_top_z=top_z,
        orbit_radius=float(rng.uniform(1.1, 1.3)), orbit_height=float(rng.uniform(1.4, 1.55)),
        orbit_start=float(rng.uniform(0, 2 * np.pi)))


def _instance_lut(floor: int, table: int, placed: list[tuple[int, SyntheticObject]],
                  spec: SyntheticSceneSpec) -> np.ndarray:
    """Body unique id + 1 -> ground-truth instance id (pixels of nothing, id -1, stay 0)."""
    lut = np.zeros(max([floor, table] + [b for b, _ in placed]) + 2, dtype=np.int32)
    lut[floor + 1] = spec.floor_id
    lut[table + 1] = spec.table_id
    for b, o in placed:
        lut[b + 1] = o.instance_id
    return lut


class _OrbitCamera:
    """TinyRenderer images of the scene from a pose; sums the time spent rendering."""

    def __init__(self, p, cid, width: int, height: int, lut: np.ndarray):
        self.p, self.cid, self.width, self.height, self.lut = p, cid, width, height, lut
        self.intr = tinyrenderer_intrinsics(width, height)
        self.proj = p.computeProjectionMatrixFOV(FOV_Y, width / height, NEAR, FAR)
        self.t_render = 0.0

    def render(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb uint8 HxWx3, OpenGL z-buffer float64, body-id segmentation int64)."""
        p, width, height = self.p, self.width, self.height
        tr = time.perf_counter()
        _, _, rgba, zbuf, seg = p.getCameraImage(
            width, height, _gl_view(pose), self.proj, renderer=p.ER_TINY_RENDERER,
            shadow=0, lightDirection=[0.4, -0.3, 1.0], lightAmbientCoeff=0.7,
            lightDiffuseCoeff=0.35, lightSpecularCoeff=0.0, physicsClientId=self.cid)
        self.t_render += time.perf_counter() - tr
        rgb = np.ascontiguousarray(
            np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3])
        zbuf = np.asarray(zbuf, dtype=np.float64).reshape(height, width)
        seg = np.asarray(seg, dtype=np.int64).reshape(height, width)
        return rgb, zbuf, seg


def _orbit_pose(spec: SyntheticSceneSpec, i: int, num_frames: int,
                target: np.ndarray) -> np.ndarray:
    """Camera-to-world pose of frame ``i`` on the orbit, looking at ``target``."""
    a = spec.orbit_start + 2 * np.pi * i / num_frames
    # a gentle bob keeps the views from being all at one height
    h = spec.orbit_height + 0.08 * np.sin(3 * a)
    eye = np.array([spec.orbit_radius * np.cos(a), spec.orbit_radius * np.sin(a), h])
    return _look_at(eye, target)


def _depth_and_instances(zbuf: np.ndarray, seg: np.ndarray, lut: np.ndarray,
                         rng: np.random.Generator, depth_noise: float):
    """(depth in m, mm-quantised, 0 where invalid; valid mask; instance id per pixel)."""
    depth = FAR * NEAR / (FAR - (FAR - NEAR) * zbuf)
    valid = (seg >= 0) & (zbuf < 1.0)
    if depth_noise > 0:
        depth = depth + rng.normal(0.0, depth_noise, depth.shape)
        valid &= depth > NEAR
    # the fused cloud is built from exactly what is written: millimetre depth
    depth = np.where(valid, np.round(depth * 1000.0) / 1000.0, 0.0)
    inst = np.where(valid, lut[np.clip(seg, -1, len(lut) - 2) + 1], 0).astype(np.int32)
    return depth, valid, inst


def _render_orbit(camera: _OrbitCamera, writer: SceneWriter, out: Path,
                  spec: SyntheticSceneSpec, rng: np.random.Generator, num_frames: int,
                  depth_noise: float) -> list[tuple[np.ndarray, ...]]:
    """Render and write every orbit frame and its instance mask; the cloud parts of the fused ones."""
    seg_dir = out / "ground_truth" / "instance_masks"
    seg_dir.mkdir(parents=True, exist_ok=True)
    target = np.array([0.0, 0.0, spec.table_top_z])
    parts = []
    # Consecutive orbit frames overlap heavily: fusing about 50 of them covers the scene.
    fuse_every = max(1, -(-num_frames // MAX_FUSED_FRAMES))
    for i in range(num_frames):
        pose = _orbit_pose(spec, i, num_frames, target)
        rgb, zbuf, seg = camera.render(pose)
        depth, valid, inst = _depth_and_instances(zbuf, seg, camera.lut, rng, depth_noise)
        writer.write_frame(i, rgb, depth, pose)
        cv2.imwrite(str(seg_dir / f"{i}.png"), inst.astype(np.uint16))
        if not i % fuse_every:
            parts.append(_cloud_part(valid, depth, inst, rgb, camera.intr.K, pose))
    return parts


def _cloud_part(valid: np.ndarray, depth: np.ndarray, inst: np.ndarray, rgb: np.ndarray,
                K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, ...]:
    """One frame's valid pixels inside the crop: (voxel keys, points, colours, instance ids)."""
    crop_lo = np.array([-TABLE_HALF[0] - CROP_MARGIN, -TABLE_HALF[1] - CROP_MARGIN])
    crop_hi = -crop_lo
    v, u = np.nonzero(valid)
    xyz = backproject_pixels(u, v, depth[v, u], K, pose)
    keep = np.all((xyz[:, :2] >= crop_lo) & (xyz[:, :2] <= crop_hi), axis=1)
    xyz, v, u = xyz[keep], v[keep], u[keep]
    vox = np.floor((xyz + VOXEL_OFFSET) / VOXEL).astype(np.int64) + (1 << 20)
    keys = (vox[:, 0] << 42) | (vox[:, 1] << 21) | vox[:, 2]
    return keys, xyz.astype(np.float32), rgb[v, u], inst[v, u]


def _write_cloud_and_truth(writer: SceneWriter, out: Path, spec: SyntheticSceneSpec,
                           parts: list[tuple[np.ndarray, ...]]) -> None:
    """Fuse the cloud parts; write the cloud, its ground truth and the spec into scene.json."""
    keys, pts, cols, labels = (np.concatenate(x) for x in zip(*parts))
    points, colors_out, gt = _fuse(keys, pts, cols, labels, spec.floor_id + 1)
    spec.num_points = int(len(points))
    writer.write_cloud(points, colors_out)
    gt_labels = {o.instance_id: {"label": o.label, "color": o.color} for o in spec.objects}
    gt_labels[spec.table_id] = {"label": "table", "color": "brown"}
    gt_labels[spec.floor_id] = {"label": "floor", "color": "grey"}
    writer.write_ground_truth(gt, gt_labels)

    meta_path = out / "scene.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["synthetic"] = _jsonable(asdict(spec))
    meta_path.write_text(json.dumps(meta, indent=2))


def _clear_previous(out: Path) -> None:
    if not out.exists() or not any(out.iterdir()):
        return
    meta_path = out / "scene.json"
    try:
        ours = "synthetic" in json.loads(meta_path.read_text())
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise FileExistsError(f"{out} exists and is not an earlier synthetic scene; "
                              "choose an empty or new folder")
    for sub in ("color", "depth", "pose", "intrinsic", "ground_truth"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name in ("cloud.ply", "scene.json"):
        (out / name).unlink(missing_ok=True)


def _fuse(keys, pts, cols, labels, n_labels):
    """Voxel-average points and colours; label each voxel by majority vote (ties: lowest id)."""
    uniq, inv = np.unique(keys, return_inverse=True)
    n = len(uniq)
    cnt = np.bincount(inv, minlength=n).astype(np.float64)
    points = np.stack([np.bincount(inv, weights=pts[:, c], minlength=n) for c in range(3)], 1)
    points = (points / cnt[:, None]).astype(np.float32)
    colors = np.stack([np.bincount(inv, weights=cols[:, c].astype(np.float64), minlength=n)
                       for c in range(3)], 1)
    colors = np.clip(np.round(colors / cnt[:, None]), 0, 255).astype(np.uint8)
    votes = np.bincount(inv * n_labels + labels, minlength=n * n_labels).reshape(n, n_labels)
    return points, colors, votes.argmax(axis=1).astype(np.int32)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    return x
