"""ROS test set-up: DDS stays on this machine and each test process gets its own domain, so
parallel runs (other checkouts, CI jobs) never see each other's nodes."""
import os

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = os.environ.get("OPENMASK3D_TEST_DOMAIN_ID",
                                             str(10 + os.getpid() % 90))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(session, config, items):
    """Run the lossless-stream replay tests before the tests that SIGKILL nodes.

    After test_ros_durability / test_ros_load (nodes SIGKILLed on this host), the TF replay
    streams of test_ros_replay_stream lost 7-44 of 60 best-effort and reliable frames in the same
    pytest process, while they receive 60/60 on their own or after the other ROS tests. The cause
    (suspected: Fast DDS state left by killed participants) is not yet understood; see the notes
    of issue 10. Until it is, the stream tests measure the node on a clean host.
    """
    first = [i for i in items if "test_ros_replay_stream" in i.nodeid]
    if first:
        items[:] = first + [i for i in items if i not in first]
