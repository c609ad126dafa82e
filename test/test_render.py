"""`openmask3d render` as a user runs it (subprocess): the PNG shows every instance in its colour,
and a query's heatmap with the top hit hottest and outlined; bad input is one clear line."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from openmask3d_ros.core import picture, render
from openmask3d_ros.core.instance_map import InstanceMap

W, H = 320, 240
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "openmask3d_ros.cli", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def panels(png):
    """The two view panels (top-down, perspective) of a rendered PNG as (H, W, 3) arrays."""
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (H + picture.HEADER_H, 2 * W + picture.LEGEND_W, 3)
    views = img[picture.HEADER_H:]
    return views[:, :W], views[:, W:2 * W]


def has_colour(panel, rgb) -> int:
    return int((panel == np.array(rgb, np.uint8)).all(axis=2).sum())


def test_instance_picture_shows_every_instance(tmp_path):
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(0, 4, 20000), rng.uniform(0, 3, 20000), np.zeros(20000)]
    boxes = [rng.uniform(0, 0.4, (3000, 3)) + [0.4 + 0.9 * (k % 4), 0.5 + 1.2 * (k // 4), 0.0]
             for k in range(8)]
    points = np.vstack([floor] + boxes).astype(np.float32)
    indices = [np.arange(20000 + 3000 * k, 23000 + 3000 * k) for k in range(8)]
    InstanceMap(points, indices, np.eye(8, dtype=np.float32)).save(tmp_path / "map")

    out = tmp_path / "pics" / "instances.png"
    proc = cli("render", tmp_path / "map", "--out", out, "--size", f"{W}x{H}")
    assert "8 instances" in proc.stdout and out.is_file()
    palette = render.instance_palette(np.arange(8))
    for panel in panels(out):
        counts = [has_colour(panel, palette[m]) for m in range(8)]
        assert min(counts) > 20, counts        # every instance visible in both views


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The README's flow: a synthetic scene and its map built with the stand-in models."""
    path = tmp_path_factory.mktemp("render") / "scene"
    cli("make-scene", path, "--frames", 30, "--width", 160, "--height", 120)
    cli("run", path)
    return path


def test_query_picture_highlights_top_hit(scene, tmp_path):
    from openmask3d_ros.core.query import open_map
    top = open_map(scene).query("red", top_k=3)[0].instance_id
    out = tmp_path / "red.png"
    proc = cli("render", scene, "--query", "red", "--out", out, "--size", f"{W}x{H}")
    assert re.search(rf"best id {top}\b", proc.stdout), proc.stdout
    seen_hottest = 0
    for panel in panels(out):
        ring = np.argwhere((panel == np.array(render.HIGHLIGHT, np.uint8)).all(axis=2))
        hot = np.argwhere((panel == render.HEAT_LUT[-1]).all(axis=2))
        assert len(ring) > 10                       # the top hit is outlined in each view
        if len(hot):
            seen_hottest += len(hot)
            # the hottest pixels (the top hit's) lie inside its outline
            assert (hot.min(0) >= ring.min(0) - 1).all() and (hot.max(0) <= ring.max(0) + 1).all()
    assert seen_hottest > 20


def test_render_bad_input_is_one_line(tmp_path):
    proc = cli("render", tmp_path, "--out", tmp_path / "x.png", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = cli("render", tmp_path, "--out", tmp_path / "x.jpg", check=False)
    assert proc.returncode == 2 and ".png" in proc.stderr and "Traceback" not in proc.stderr


def test_zbuffer_keeps_the_nearest_point():
    # two points over the same spot: from the top the higher one is seen
    pts = np.array([[0, 0, 0.0], [0, 0, 1.0], [1, 1, 0.0]], np.float32)
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    view = render.render_view(pts, cols, np.array([0, 1, 2], np.int32), "top", 64, 64, 0.0)
    assert set(np.unique(view.labels).tolist()) == {-1, 1, 2}
    seen = view.rgb[view.labels == 1]     # (lone points are drawn darker: silhouette ink)
    assert len(seen) and (seen[:, 1] > 0).all() and (seen[:, 0] == 0).all()
