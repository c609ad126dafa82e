"""A room whose spatial answers are known, built point by point (z up, metres), one colour per
instance so the colour stand-in encoder answers the noun phrases exactly and the geometry alone
decides relations (test_relations.py, ros/test_ros_relations.py)."""
import numpy as np

from openmask3d_ros.core.encoders.colour import COLOUR_NAMES, ColourEncoder
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.map_meta import MapMeta, StructureRecord
from openmask3d_ros.core.query import QueryEngine

RNG = np.random.default_rng(7)


def cuboid(centre, size, yaw_deg=0.0, n=1500, surface_only=False):
    """Points filling (or covering the top of) a box rotated by ``yaw_deg`` about z."""
    p = (RNG.random((n, 3)) - 0.5) * np.asarray(size)
    if surface_only:
        p[:, 2] = size[2] / 2
    a = np.radians(yaw_deg)
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return (p @ R.T + centre).astype(np.float32)


# name: (colour, centre, size, yaw, structure reason)
ROOM = {
    "floor": ("grey", (0.5, 0, -0.005), (4, 4, 0.01), 0, "floor plane"),
    "table": ("brown", (0, 0, 0.74), (1.2, 0.8, 0.02), 0, "table top"),
    "mug_on_table": ("red", (0.2, 0.0, 0.80), (0.08, 0.08, 0.10), 0, None),
    "mug_on_floor": ("red", (1.5, -1.0, 0.06), (0.10, 0.10, 0.12), 0, None),
    "box_under_table": ("blue", (0.0, 0.1, 0.15), (0.3, 0.3, 0.3), 0, None),
    "tray": ("black", (-0.35, 0.15, 0.765), (0.3, 0.2, 0.03), 0, None),
    "ball_in_tray": ("green", (-0.35, 0.15, 0.79), (0.06, 0.06, 0.06), 0, None),
    "book": ("yellow", (0.3, -0.25, 0.77), (0.30, 0.20, 0.04), 45, None),
}


def room_engine():
    enc = ColourEncoder()
    pts, idx, feats, tags = [], [], [], []
    start = 0
    for colour, centre, size, yaw, tag in ROOM.values():
        p = cuboid(centre, size, yaw)
        pts.append(p)
        idx.append(np.arange(start, start + len(p)))
        start += len(p)
        feats.append(np.eye(len(COLOUR_NAMES), dtype=np.float32)[COLOUR_NAMES.index(colour)])
        tags.append(tag)
    meta = MapMeta(structure=StructureRecord(reasons=tags))
    imap = InstanceMap(np.concatenate(pts), idx, np.stack(feats), meta)
    return QueryEngine(imap, enc), {name: i for i, name in enumerate(ROOM)}
