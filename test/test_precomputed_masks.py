"""Precomputed masks: the official mask stage's .pt (torch.save of a numpy array) loads through
a numpy-only allow-list; anything else is refused with an error that names the file."""
import pickle
import zipfile

import numpy as np
import pytest
import torch

from openmask3d_ros.core.errors import InputError
from openmask3d_ros.core.proposals.precomputed import load_masks


def official_masks(P=50, M=4, seed=0):
    # the official trainer: torch.save(pred_masks.astype(np.float16), f"{scene}_masks.pt")
    return (np.random.default_rng(seed).random((P, M)) > 0.5).astype(np.float16)


def test_official_pt_file_loads(tmp_path):
    arr = official_masks()
    torch.save(arr, tmp_path / "scene0011_00_masks.pt")
    masks = load_masks(tmp_path / "scene0011_00_masks.pt", num_points=50)
    assert masks.dtype == bool and np.array_equal(masks, arr > 0)


def test_official_pt_written_with_numpy1_module_names_loads(tmp_path):
    # the official environment (numpy 1.x) pickles numpy.core.multiarray._reconstruct
    arr = official_masks()
    torch.save(arr, tmp_path / "a.pt")
    src, dst = zipfile.ZipFile(tmp_path / "a.pt"), zipfile.ZipFile(tmp_path / "b.pt", "w")
    for name in src.namelist():
        data = src.read(name)
        if name.endswith("data.pkl"):
            data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        dst.writestr(name, data)
    dst.close()
    assert np.array_equal(load_masks(tmp_path / "b.pt", 50), arr > 0)


def test_torch_tensor_and_transposed_layout(tmp_path):
    arr = official_masks()
    torch.save(torch.from_numpy(arr.T.copy()), tmp_path / "t.pt")
    assert np.array_equal(load_masks(tmp_path / "t.pt", 50), arr > 0)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("payload", [np.array([{"a": 1}], dtype=object), Evil()])
def test_arbitrary_pickles_in_pt_are_refused(tmp_path, payload, capsys):
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(InputError, match="evil.pt"):
        load_masks(path, 50)
    assert "pwned" not in capsys.readouterr().out


def test_bad_npy_files_name_the_file(tmp_path):
    obj = tmp_path / "object.npy"
    np.save(obj, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="object.npy"):
        load_masks(obj, 2)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(InputError, match="junk.npy"):
        load_masks(junk, 2)
    junk_pt = tmp_path / "junk.pt"
    junk_pt.write_bytes(pickle.dumps([1, 2]) + b"\x00" * 20)
    with pytest.raises(InputError, match="junk.pt"):
        load_masks(junk_pt, 2)
    shape = tmp_path / "shape.npy"
    np.save(shape, np.ones((7, 3), bool))
    with pytest.raises(InputError, match=r"shape.npy.*\(7, 3\).*50 points"):
        load_masks(shape, 50)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.ones(50, bool))
    with pytest.raises(InputError, match="flat.npy.*2-D"):
        load_masks(flat, 50)


def test_official_masks_file_runs_column_for_column(tmp_path):
    """`openmask3d run --masks x_masks.pt`: official mode uses the file's masks as they are (the
    official feature stage neither splits nor filters them); paper mode splits with DBSCAN and
    drops parts under proposals.min_mask_points."""
    from openmask3d_ros.cli import main as cli
    from openmask3d_ros.core.instance_map import InstanceMap
    from openmask3d_ros.core.synthetic import make_scene
    root = make_scene(tmp_path / "scene", seed=1, num_frames=8, width=96, height=72)
    ids = np.load(root / "ground_truth" / "instance_ids.npy")
    objects = [ids == i for i in np.unique(ids) if i > 0]
    two_parts = objects[0] | objects[1]                   # one mask, two separate objects
    small = np.zeros(len(ids), bool)
    small[np.flatnonzero(objects[2])[:5]] = True           # 5 points: under min_mask_points
    empty = np.zeros(len(ids), bool)
    masks = np.stack([two_parts, empty, small] + objects[3:], axis=1).astype(np.float16)
    torch.save(masks, tmp_path / "scene_masks.pt")
    assert cli(["run", str(root), "--masks", str(tmp_path / "scene_masks.pt"),
                "--frame-step", "2"]) == 0
    meta = InstanceMap.load(root).meta
    assert [i.mask_column for i in meta.instances] == [0] + list(range(2, masks.shape[1]))
    assert [i.num_points for i in meta.instances][:2] == [int(two_parts.sum()), 5]
    (tmp_path / "paper.yaml").write_text("fidelity: paper\n")
    assert cli(["run", str(root), "--masks", str(tmp_path / "scene_masks.pt"),
                "--frame-step", "2", "--config", str(tmp_path / "paper.yaml")]) == 0
    meta = InstanceMap.load(root).meta
    sizes = [i.num_points for i in meta.instances]
    assert 5 not in sizes and len(sizes) == masks.shape[1] - 2    # small part dropped


# -- how masks are binarised (issue 21, W5) ------------------------------------------------------
@pytest.mark.parametrize("values,example", [
    (lambda rng, shape: rng.random(shape).astype(np.float32), "in column 0"),    # in [0, 1)
    (lambda rng, shape: rng.integers(0, 4, shape), "found"),                    # labels
    (lambda rng, shape: np.where(rng.random(shape) > 0.5, 1.0, np.nan), "nan"),
])
def test_masks_other_than_0_and_1_are_refused(tmp_path, values, example):
    """Random floats in [0, 1) gave 3 instances of every point each (thresholded at > 0)."""
    path = tmp_path / "soft.npy"
    np.save(path, values(np.random.default_rng(0), (50, 3)))
    with pytest.raises(InputError, match=rf"soft.npy.*only 0 and 1.*{example}.*binarise"):
        load_masks(path, 50)


def test_binary_numbers_and_booleans_load_as_they_are(tmp_path):
    arr = official_masks()
    for dtype in (bool, np.uint8, np.int64, np.float32, np.float64):
        np.save(tmp_path / "m.npy", arr.astype(dtype))
        assert np.array_equal(load_masks(tmp_path / "m.npy", 50), arr > 0)


def test_masks_through_the_cli(scene_copy, caplog, capsys):
    """`openmask3d run --masks`: float masks in [0, 1) are refused (exit 2, one line naming the
    file and how masks are read); a 0/1 mask covering nearly the whole cloud builds with a
    warning naming its column."""
    from openmask3d_ros.cli import main as cli
    from openmask3d_ros.core.instance_map import InstanceMap
    scene = scene_copy(seed=3)
    ids = np.load(scene / "ground_truth" / "instance_ids.npy")
    soft = scene.parent / "soft.npy"
    np.save(soft, np.random.default_rng(0).random((len(ids), 3)).astype(np.float32))
    assert cli(["run", str(scene), "--frame-step", "2", "--masks", str(soft)]) == 2
    err = capsys.readouterr().err
    assert "soft.npy" in err and "only 0 and 1" in err and "Traceback" not in err
    objects = [ids == i for i in np.unique(ids) if i > 0]
    whole = np.ones(len(ids), bool)
    whole[:len(ids) // 50] = False                          # 98 % of the points
    masks = np.stack(objects + [whole], axis=1).astype(np.float16)
    np.save(scene.parent / "whole.npy", masks)
    caplog.set_level("WARNING")
    assert cli(["run", str(scene), "--frame-step", "2", "--masks",
                str(scene.parent / "whole.npy")]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("whole.npy" in w and "95%" in w and f"columns {len(objects)}" in w
               for w in warned), warned
    assert InstanceMap.load(scene).num_instances == len(objects) + 1
