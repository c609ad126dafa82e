"""The status board: every recorder counter reaches PipelineStatus and /diagnostics under its one
name, and a name that is not a status field is an error instead of being dropped."""
import pytest

from openmask3d_ros.core.recorder import Drop, RecorderCounters
from openmask3d_ros.msg import PipelineStatus
from openmask3d_ros.ros.status import (ADVICE, DIAGNOSTICS_ONLY, StatusBoard, diagnostics,
                                       status_message)


def _board() -> tuple[StatusBoard, RecorderCounters]:
    drops = {d: 10 + i for i, d in enumerate(Drop)}          # a different count per cause
    counters = RecorderCounters(frames_received=7, keyframes=3, pending=1, drops=drops,
                                stream_pauses=2)
    board = StatusBoard()
    board.merge_counters(counters)
    return board, counters


def test_every_counter_reaches_the_status_message_and_diagnostics():
    board, counters = _board()
    msg = status_message(board.snapshot(), None, "map")
    assert (msg.frames_received, msg.keyframes, msg.stream_pauses) == (7, 3, 2)
    assert {d: getattr(msg, d.value) for d in Drop} == counters.drops
    diag = diagnostics(board.snapshot(), "/openmask3d", None, counters.drops)
    values = {kv.key: kv.value for kv in diag.status[0].values}
    assert {d: int(values[d.value]) for d in Drop} == counters.drops
    assert values["stream_pauses"] == "2"
    for d in Drop:
        assert f"dropped ({d.value}): {ADVICE[d]}" in diag.status[0].message


def test_every_board_field_is_published():
    """Every field is a PipelineStatus field or declared diagnostics-only."""
    fields = set(PipelineStatus.get_fields_and_field_types())
    assert set(StatusBoard().snapshot()) - fields == set(DIAGNOSTICS_ONLY)


def test_a_misspelt_field_is_an_error():
    board, _ = _board()
    with pytest.raises(KeyError):
        board.update(frames_mised=1)
    with pytest.raises(KeyError, match="dropped_stamp_gap"):
        status_message({**board.snapshot(), "dropped_stamp_gap": 1}, None, "map")
