"""ROS test set-up: DDS stays on this machine and each test process gets its own domain, so
parallel runs (other checkouts, CI jobs) never see each other's nodes."""
import os

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = os.environ.get("OPENMASK3D_TEST_DOMAIN_ID",
                                             str(10 + os.getpid() % 90))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(session, config, items):
    """Run the lossless-stream replay tests before the tests that SIGKILL nodes.

    Seen once (issue 10, not reproduced since): after test_ros_durability (7 nodes SIGKILLed)
    and test_ros_load, the TF replay streams of test_ros_replay_stream lost 7-44 of 60
    best-effort and reliable frames in the same pytest run, while they receive 60/60 on their
    own or after the other ROS tests.

    What a SIGKILL leaves (measured, Fast DDS 3.2): the killed node's shared-memory segment
    (/dev/shm/fastdds_<id>, 35 MB with config/fastdds.xml's 32 MB segment) and its ports stay in
    /dev/shm; later participants reuse the ports but never remove the segment (only
    `fastdds shm clean` does), so each kill keeps ~35 MB of /dev/shm until then. Suspected, not
    proven: on a host whose /dev/shm is small (Docker's default is 64 MB) the stream's node and
    player then cannot get their segments, so 0.9 MB frames go over fragmented UDP, the loss
    config/fastdds.xml exists to prevent. To remove this ordering: check `df /dev/shm` on the CI
    host, clean the killed nodes' segments after each SIGKILL, and run the streams last.
    """
    first = [i for i in items if "test_ros_replay_stream" in i.nodeid]
    if first:
        items[:] = first + [i for i in items if i not in first]
