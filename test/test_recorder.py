"""The ROS-free keyframe recorder: candidates, pose waits on the caller's clock, drop causes, and
a folder that the pipeline does not decimate again."""
import json

import numpy as np
import pytest

from openmask3d_ros.core.recorder import Drop, KeyframeRecorder, RecorderCounters
from openmask3d_ros.core.scene import SceneFolder

S = 1_000_000_000
PERIOD = S // 30


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from openmask3d_ros.core.synthetic import make_scene
    return SceneFolder(make_scene(tmp_path_factory.mktemp("scene"), seed=2, num_frames=12,
                                  width=80, height=60))


class Clock:
    def __init__(self, t: int = 1):
        self.t = t

    def __call__(self):
        return self.t


def _recorder(tmp_path, scene, poses, clock, **kw):
    """Payload = frame id; poses: {stamp_ns: 4x4}, interpolation-free (exact stamps only, or
    the nearest when not strict)."""
    def decode(fid):
        if fid == "bad":
            raise ValueError("depth image is 3x3, colour 80x60")
        return scene.color(fid), scene.depth(fid), scene.color_intrinsics()

    def pose_at(stamp, strict):
        if stamp in poses:
            return poses[stamp]
        if not strict and poses:
            near = min(poses, key=lambda t: abs(t - stamp))
            if abs(near - stamp) <= S // 50:
                return poses[near]
        raise LookupError(f"no pose at {stamp}")
    warnings = []
    rec = KeyframeRecorder(tmp_path / "rec", kw.pop("frame_step", 3), decode, pose_at, clock,
                           warn=lambda cause, text: warnings.append((cause, text)), **kw)
    return rec, warnings


def test_candidates_wait_for_their_pose_in_caller_time(tmp_path, scene):
    clock, poses = Clock(), {}
    rec, warnings = _recorder(tmp_path, scene, poses, clock, pose_wait_s=2.0)
    fids = scene.frame_ids
    for i, fid in enumerate(fids):                  # 12 frames, step 3: candidates 0, 3, 6, 9
        rec.offer(i * PERIOD, fid)
    assert rec.pending() == 4
    assert rec.process() == 0                        # no pose yet, still within the wait
    poses[0], poses[3 * PERIOD] = scene.pose(fids[0]), scene.pose(fids[3])
    assert rec.process() == 2 and rec.pending() == 2
    clock.t = 3 * S                                  # the wait ends (e.g. simulated time)
    poses[6 * PERIOD + S // 100] = scene.pose(fids[6])   # near, not exact: used after the wait
    assert rec.process() == 1
    c = rec.counters()
    assert c.keyframes == 3 and c.drops[Drop.frames_without_pose] == 1 and c.pending == 0
    assert c.frames_received == 12
    assert [w[0] for w in warnings] == [Drop.frames_without_pose]
    out = SceneFolder(tmp_path / "rec")
    assert out.frame_ids == ["0", "1", "2"] and out.keyframe_step == 3
    np.testing.assert_allclose(out.pose("1"), scene.pose(fids[3]), atol=1e-6)
    rows = (tmp_path / "rec" / "keyframes.csv").read_text().split()
    assert rows[1] == f"1,3,{3 * PERIOD}"


def test_wait_starts_with_a_clock_that_had_not_started(tmp_path, scene):
    """use_sim_time before the first /clock: the node's clock reads 0. A candidate that came
    then waits pose_wait from the clock's first reading, not from 0 (its wait would otherwise end
    at the jump to bag time although its pose follows 30 ms later)."""
    clock, poses = Clock(0), {}
    rec, warnings = _recorder(tmp_path, scene, poses, clock, pose_wait_s=2.0, frame_step=1)
    stamp = 1_700_000_000 * S
    rec.offer(stamp, scene.frame_ids[0])
    assert rec.process() == 0 and rec.pending() == 1      # clock not started: it waits
    clock.t = stamp                                        # the first /clock
    assert rec.process() == 0 and rec.pending() == 1      # still within its wait
    clock.t = stamp + S // 30
    poses[stamp] = scene.pose(scene.frame_ids[0])          # the pose, 33 ms later
    assert rec.process() == 1 and not warnings
    clock.t = stamp + 10 * S
    rec.offer(stamp + 9 * S, scene.frame_ids[3])           # a clock that runs: waits as before
    clock.t = stamp + 13 * S
    assert rec.process() == 0 and rec.counters().drops[Drop.frames_without_pose] == 1


def test_drops_by_cause(tmp_path, scene):
    clock, poses = Clock(), {}
    rec, warnings = _recorder(tmp_path, scene, poses, clock, frame_step=1, queue_size=2)
    stamps = [i * PERIOD for i in range(8)] + [12 * PERIOD]   # frames 8..11 lost in transport
    for t in stamps:
        rec.offer(t, scene.frame_ids[0])
    c = rec.counters()
    assert c.drops[Drop.frames_missed] == 4 and c.frames_received == 9
    assert c.drops[Drop.frames_overflow] == 7 and c.pending == 2
    rec.reject("unsupported depth encoding '8UC3'")
    poses[7 * PERIOD] = poses[12 * PERIOD] = scene.pose(scene.frame_ids[0])
    rec.offer(13 * PERIOD, "bad")                    # pushes the candidate at 7 out
    poses[13 * PERIOD] = np.eye(4)
    rec.process(force=True)
    c = rec.counters()
    assert c == RecorderCounters(frames_received=11, keyframes=1, pending=0, drops={
        Drop.frames_missed: 4, Drop.frames_overflow: 8, Drop.frames_without_pose: 0,
        Drop.frames_rejected: 2, Drop.frames_overrun: 0, Drop.frames_time_jump: 0})
    assert {w[0] for w in warnings} == {Drop.frames_missed, Drop.frames_overflow,
                                        Drop.frames_rejected}


def test_each_counter_has_one_name():
    """A drop cause's name is its counter's name everywhere; a misspelt one is an error."""
    assert all(d.name == d.value for d in Drop)
    with pytest.raises(AttributeError):
        Drop.stamp_gap  # noqa: B018  (the old name of frames_missed)


def test_restart_continues_numbering_and_pipeline_respects_step(tmp_path, scene):
    from openmask3d_ros.core.config import PipelineConfig
    from openmask3d_ros.core.pipeline import run_pipeline
    clock = Clock()
    poses = {i * PERIOD: scene.pose(fid) for i, fid in enumerate(scene.frame_ids)}
    rec, _ = _recorder(tmp_path, scene, poses, clock, frame_step=4)
    for i, fid in enumerate(scene.frame_ids[:6]):
        rec.offer(i * PERIOD, fid)
    rec.process()
    again, _ = _recorder(tmp_path, scene, poses, clock, frame_step=4)
    assert again.keyframes == 2
    for i, fid in enumerate(scene.frame_ids[6:], start=6):
        again.offer(i * PERIOD, fid)
    again.process()
    out = SceneFolder(tmp_path / "rec")
    assert out.frame_ids == ["0", "1", "2", "3"]
    pts, cols = scene.cloud()
    imap = run_pipeline(out, PipelineConfig(), cloud=(pts, cols))   # cfg.frame_step is 10
    meta = imap.meta
    assert meta.frames.keyframes == 4 and meta.frame_step == 4
    assert json.loads((tmp_path / "rec" / "scene.json").read_text())["keyframe_step"] == 4


def test_gaps_are_losses_overruns_or_pauses(tmp_path, scene):
    """A gap in the stamps is frames lost before the node (they came on time), frames dropped
    in the node's own queue (the frame after the gap came late: frames_overrun), or, longer
    than pause_s, a pause of the stream; a frame out of order is not a gap twice."""
    clock, infos = Clock(), []
    rec, warnings = _recorder(tmp_path, scene, {}, clock, frame_step=1000, pause_s=1.0,
                              info=infos.append)

    def offer(k: int, late_s: float = 0.0) -> None:
        clock.t = 100 * S + k * PERIOD + 5_000_000 + int(late_s * S)   # 5 ms transport delay
        rec.offer(100 * S + k * PERIOD, "f")
    for k in range(8):
        offer(k)
    offer(11)                                  # 3 frames lost in transport: on time after them
    offer(12)
    offer(20, late_s=0.5)                      # 7 dropped in the queue: this one waited 0.5 s
    offer(19, late_s=0.5)                      # out of order: no gap, and 13-19 not counted again
    offer(21, late_s=0.5)
    c = rec.counters()
    assert (c.drops[Drop.frames_missed], c.drops[Drop.frames_overrun]) == (3, 7)
    assert "input faster than the node can take" in warnings[-1][1]
    offer(21 + 150)                            # 5 s later: a pause, not 149 lost frames
    c = rec.counters()
    assert (c.drops[Drop.frames_missed], c.drops[Drop.frames_overrun]) == (3, 7)
    assert c.stream_pauses == 1 and "paused for 5.0 s" in infos[-1]


def test_time_jump_drops_waiting_candidates(tmp_path, scene):
    clock, poses = Clock(), {}
    rec, warnings = _recorder(tmp_path, scene, poses, clock, frame_step=1)
    for k in range(3):
        rec.offer(100 * S + k * PERIOD, scene.frame_ids[k])
    assert rec.time_jumped("ROS time jumped back 50 s") == 3
    poses[100 * S] = scene.pose(scene.frame_ids[0])    # a pose from the old time comes late
    assert rec.process(force=True) == 0                # nothing of the old time is written
    c = rec.counters()
    assert c.pending == 0 and c.drops[Drop.frames_time_jump] == 3 and c.keyframes == 0
    assert warnings[-1] == (Drop.frames_time_jump, "3 keyframe candidate(s) dropped: ROS time "
                                                   "jumped back 50 s")
