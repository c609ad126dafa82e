"""meta.json as typed records: maps written by release 0.1 still load, values round-trip, and a
bad key is named."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from openmask3d_ros.core.errors import InputError
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.map_meta import FORMAT_VERSION, MapMeta
from openmask3d_ros.core.query import open_map

RELEASE_0_1 = Path(__file__).parent / "data" / "map_release_0_1"   # written by commit d9d886e


def test_a_map_written_by_release_0_1_loads_typed_and_answers():
    imap = InstanceMap.load(RELEASE_0_1)
    meta = imap.meta
    assert meta.models.image_encoder == "colour-standin" and meta.frames.keyframes == 4
    assert len(meta.instances) == imap.num_instances and meta.cloud.num_points == len(imap.points)
    assert meta.pipeline_config().fidelity == "official" and meta.structure.reasons
    assert meta.generation == RELEASE_0_1.name and meta.extra == {}
    stored = json.loads((RELEASE_0_1 / "meta.json").read_text())
    assert meta.to_json() == stored          # nothing lost, nothing added
    assert open_map(RELEASE_0_1).query("red", top_k=1)


def test_saving_again_keeps_keys_this_version_does_not_know(tmp_path):
    imap = InstanceMap.load(RELEASE_0_1)
    imap.meta.extra["from_a_newer_tool"] = {"x": 1}
    imap.save(tmp_path / "map")
    again = InstanceMap.load(tmp_path / "map")
    assert again.meta.extra == {"from_a_newer_tool": {"x": 1}}
    assert again.meta.to_json()["instances"] == imap.meta.to_json()["instances"]


@pytest.mark.parametrize("key, value, named", [
    ("frames", [], "frames"),
    ("segmenter_images", "3", "segmenter_images"),
    ("instances", [{"views": [], "num_points": 1, "bogus": 1}, 5], "instances[1]"),
    ("format_version", FORMAT_VERSION + 1, "format_version"),
])
def test_a_bad_key_is_named(tmp_path, key, value, named):
    gen = tmp_path / "gen"
    shutil.copytree(RELEASE_0_1, gen)
    data = json.loads((gen / "meta.json").read_text())
    data[key] = value
    (gen / "meta.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=rf"meta.json.*{named.replace('[', '.').replace(']', '.')}"):
        InstanceMap.load(gen)


def test_proposal_scores_need_a_score_for_every_instance():
    meta = MapMeta.from_json({"instances": [{"proposal_score": 0.9}, {"proposal_score": 0.2}]})
    np.testing.assert_allclose(meta.proposal_scores(), [0.9, 0.2])
    assert MapMeta.from_json({"instances": [{"proposal_score": 0.9}, {}]}).proposal_scores() \
        is None
