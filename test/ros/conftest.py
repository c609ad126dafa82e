"""ROS test set-up: DDS stays on this machine and each test process gets its own domain, so
parallel runs (other checkouts, CI jobs) never see each other's nodes."""
import os

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = os.environ.get("OPENMASK3D_TEST_DOMAIN_ID",
                                             str(10 + os.getpid() % 90))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
