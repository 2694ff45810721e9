"""Fan-out: deliver one message to many connections, encoded once, awaiting nobody.

The frame is built once (``protocol.ws.OutboundMessage``); each recipient gets the
same ``bytes`` object queued to its corked output, or the shared context-free
compressed frame when it negotiated ``server_no_context_takeover``. A recipient that
is closing or too slow is skipped (and handled by its own slow-consumer policy):
the loop never waits on any of them (websockets' broadcast rule).
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.hub.member import Member
from engine.limits.slow import Policy
from protocol.ws import OutboundMessage

__all__ = ["fanout", "prepare"]


def prepare(data: str | bytes, compression_threshold: int = 128) -> OutboundMessage:
    """Build the message once; text for ``str``, binary for ``bytes``."""
    if isinstance(data, str):
        return OutboundMessage(
            data.encode("utf-8"), text=True, compression_threshold=compression_threshold
        )
    return OutboundMessage(bytes(data), text=False, compression_threshold=compression_threshold)


def fanout(
    message: OutboundMessage,
    targets: Iterable[Member],
    policy: Policy | None = None,
    key: str | None = None,
    write_now: bool = False,
) -> int:
    """Queue ``message`` to every target; returns how many took it.

    ``policy``/``key``: the slow-consumer policy of this message's event type and its
    conflation key (engine/limits/slow.py); None: each connection's path policy applies.
    ``write_now``: write each connection's frame now rather than at the end of the
    loop iteration (``Publish.write_now``: lower latency for a lone publish, more
    system calls).
    """
    delivered = 0
    if write_now:
        for ws in targets:
            if ws.send_now(message, policy, key):
                delivered += 1
        return delivered
    for ws in targets:
        if ws.send_prepared(message, policy, key):
            delivered += 1
    return delivered
