"""The node's map owner (ros/map_builder.MapBuilder): a map, loaded or built, reaches queries and the
'ready' status only after its views (instance cloud, markers) are out, so the first query on it
already gets its heatmap."""
import logging

import pytest

from openmask3d_ros.core.config import PipelineConfig
from openmask3d_ros.core.instance_map import MAP_DIRNAME
from openmask3d_ros.msg import PipelineStatus
from openmask3d_ros.ros.map_builder import MapBuilder
from openmask3d_ros.ros.status import StatusBoard


@pytest.mark.parametrize("how", ["loaded", "built"])
def test_views_are_out_before_queries_see_the_map(scene_copy, how):
    root = scene_copy(0)
    board = StatusBoard()
    at_views: list = []
    published: list = []
    builder = MapBuilder(root, PipelineConfig().updated({"frame_step": 2}), board,
                         logging.getLogger("test"), lambda: published.append(board.get("state")),
                         on_map=lambda engine: at_views.append((builder.engine, board.get("state"),
                                                                engine)))
    builder.start_loading([root / MAP_DIRNAME] if how == "loaded" else [])
    if how == "built":            # the build waits for the models itself
        ok, message = builder.start(lambda: 10, None)
        assert ok, message
    builder.join(120)
    assert board.get("state") == PipelineStatus.STATE_READY, board.snapshot()
    assert len(at_views) == 1
    engine_then, state_then, shown = at_views[0]
    assert engine_then is None                          # queries still had no map ...
    assert state_then != PipelineStatus.STATE_READY    # ... and nobody was told 'ready'
    assert builder.engine is shown                      # then the map with those views
    assert shown.map.num_instances > 0
