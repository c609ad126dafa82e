"""The one latched QoS profile: what the node's status and views are published with, and what a
subscriber (client, RViz-like tools, tests) asks for to get the last message on joining."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy


def latched_qos(depth: int = 1) -> QoSProfile:
    """Reliable + transient local, keep last ``depth``: a subscriber started later still gets the
    last message(s)."""
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
