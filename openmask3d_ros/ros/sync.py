"""Approximate-time synchronisation of colour, depth and camera_info.

message_filters is not on PyPI; ``ApproximateTimeSync`` is a small stand-in with the same idea:
one queue per input; when a message arrives, the closest-in-time message of every other queue is
taken, and if all stamps lie within ``slop`` seconds of each other the set is emitted and it and
everything older is dropped. ``make_synchronizer`` uses message_filters when installed.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from .conversions import stamp_to_ns


class ApproximateTimeSync:
    """Match messages from ``n`` inputs whose header stamps differ by at most ``slop`` seconds."""

    def __init__(self, n: int, callback: Callable[..., None], queue_size: int = 10,
                 slop: float = 0.05):
        if n < 2:
            raise ValueError("need at least two inputs to synchronise")
        self.n = n
        self.callback = callback
        self.queue_size = max(1, int(queue_size))
        self.slop_ns = int(slop * 1e9)
        self._queues: list[list[tuple[int, object]]] = [[] for _ in range(n)]
        self._lock = threading.Lock()
        self.received = [0] * n   # messages per input
        self.dropped = 0   # messages that left a queue without being part of a set

    def add(self, index: int, msg) -> bool:
        """Add a message of input ``index``; returns True when it completed a set."""
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            self.received[index] += 1
            q = self._queues[index]
            q.append((stamp, msg))
            q.sort(key=lambda item: item[0])
            while len(q) > self.queue_size:
                q.pop(0)
                self.dropped += 1
            mine = next((k for k, (_, m) in enumerate(q) if m is msg), None)
            if mine is None:          # older than everything in a full queue
                return False
            chosen: list[int] = []
            for i, other in enumerate(self._queues):
                if i == index:
                    chosen.append(mine)
                    continue
                if not other:
                    return False
                k = min(range(len(other)), key=lambda j: abs(other[j][0] - stamp))
                chosen.append(k)
            stamps = [self._queues[i][k][0] for i, k in enumerate(chosen)]
            if max(stamps) - min(stamps) > self.slop_ns:
                return False
            msgs = [self._queues[i][k][1] for i, k in enumerate(chosen)]
            for i, k in enumerate(chosen):
                self.dropped += k   # older messages of this input that never matched
                del self._queues[i][:k + 1]
        self.callback(*msgs)
        return True

    def inputs(self) -> list[Callable[[object], bool]]:
        """One callback per input, to hand to subscriptions."""
        return [lambda m, i=i: self.add(i, m) for i in range(self.n)]

    def reset(self) -> None:
        """Forget the queued messages (time jumped backwards: they cannot match new ones)."""
        with self._lock:
            for q in self._queues:
                q.clear()


class _MessageFiltersSync:
    """message_filters.ApproximateTimeSynchronizer over its own Subscribers (``raw``: over
    sources of SerializedMessages, see ``_serialized_source``)."""

    def __init__(self, node, specs: Sequence[tuple[type, str]], qos, callback, queue_size, slop,
                 callback_group=None, raw=False):
        import message_filters
        if raw:
            self.subs = [_serialized_source(message_filters, node, msg_type, topic, qos,
                                            callback_group) for msg_type, topic in specs]
        else:
            self.subs = [message_filters.Subscriber(node, msg_type, topic, qos_profile=qos,
                                                    callback_group=callback_group)
                         for msg_type, topic in specs]
        self.sync = message_filters.ApproximateTimeSynchronizer(self.subs, queue_size, slop)
        self.sync.registerCallback(callback)
        self.received = [0] * len(self.subs)
        for i, sub in enumerate(self.subs):
            sub.registerCallback(lambda *_msg, i=i: self._count(i))
        self._node = node
        self.name = "message_filters"

    def _count(self, i: int) -> None:
        self.received[i] += 1

    def reset(self) -> None:
        """Forget the queued messages (message_filters' own queues, under its lock)."""
        with self.sync.lock:
            for q in self.sync.queues:
                q.clear()

    def counts(self) -> tuple[list[int], int | None]:
        """(messages received per input, messages never matched: unknown here)."""
        return list(self.received), None

    def destroy(self) -> None:
        for s in self.subs:
            self._node.destroy_subscription(s.sub)
        self.subs = []


def _serialized_source(message_filters, node, msg_type, topic, qos, callback_group):
    """A message_filters source (what its Subscriber is) that takes ``topic`` serialized and
    passes SerializedMessages on; ``.sub`` is the subscription."""
    from .camera_input import wrap
    source = message_filters.SimpleFilter()
    source.sub = node.create_subscription(
        msg_type, topic, lambda data: source.signalMessage(wrap(data, msg_type)), qos,
        callback_group=callback_group, raw=True)
    return source


class _OwnSync:
    def __init__(self, node, specs, qos, callback, queue_size, slop, callback_group=None,
                 raw=False):
        self.sync = ApproximateTimeSync(len(specs), callback, queue_size, slop)
        self._node = node
        inputs = self.sync.inputs()
        if raw:     # serialized messages in, SerializedMessages to the sync
            from .camera_input import wrap
            inputs = [lambda data, add=add, t=msg_type: add(wrap(data, t))
                      for add, (msg_type, _) in zip(inputs, specs)]
        self.subs = [node.create_subscription(msg_type, topic, cb, qos,
                                              callback_group=callback_group, raw=raw)
                     for (msg_type, topic), cb in zip(specs, inputs)]
        self.name = "openmask3d ApproximateTimeSync"

    def counts(self) -> tuple[list[int], int | None]:
        """(messages received per input, messages that left the queues unmatched)."""
        return list(self.sync.received), self.sync.dropped

    def reset(self) -> None:
        self.sync.reset()

    def destroy(self) -> None:
        for s in self.subs:
            self._node.destroy_subscription(s)
        self.subs = []


def make_synchronizer(node, specs: Sequence[tuple[type, str]], qos, callback,
                      queue_size: int = 10, slop: float = 0.05, prefer_message_filters=True,
                      callback_group=None, raw=False):
    """Subscribe to ``specs`` [(type, topic), ...] and call ``callback(*msgs)`` per matched set
    (in ``callback_group``). The returned object has ``name``, ``counts()``, ``reset()``
    and ``destroy()``. ``raw``: take the messages serialized and match them as
    ``camera_input.SerializedMessage`` (deserialised only by whoever needs a set's content)."""
    if prefer_message_filters:
        try:
            return _MessageFiltersSync(node, specs, qos, callback, queue_size, slop,
                                       callback_group, raw)
        except ImportError:
            pass
    return _OwnSync(node, specs, qos, callback, queue_size, slop, callback_group, raw)
