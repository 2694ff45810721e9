"""Fan-out: deliver one message to many connections, encoded once, awaiting nobody.

The frame is built once (``protocol.ws.OutboundMessage``); each recipient gets the
same ``bytes`` object queued to its corked output, or the shared context-free
compressed frame when it negotiated ``server_no_context_takeover``. A recipient that
is closing or too slow is skipped (and handled by its own slow-consumer policy):
the loop never waits on any of them (websockets' broadcast rule).
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.core.metrics import Metrics
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
    metrics: Metrics | None = None,
) -> int:
    """Queue ``message`` to every target; returns how many took it.

    ``policy``/``key``: the slow-consumer policy of this message's event type and its
    conflation key (engine/limits/slow.py); None: each connection's path policy applies.
    ``write_now``: write each connection's frame now rather than at the end of the
    loop iteration (``Publish.write_now``: lower latency for a lone publish, more
    system calls). ``metrics``: where the recipients the loops served themselves are
    counted, once per publish.
    """
    first = next(iter(targets), None)
    if first is None:
        return 0
    # The loop is the recipients' class's: one call per publish, not one per member.
    if write_now:
        delivered, written = type(first).fan_now(message, targets, policy, key)
        if written and metrics is not None:
            metrics.ws_messages_out += written
            metrics.ws_bytes_out += written * len(message.plain)
        return delivered
    delivered, corked = type(first).fan_corked(message, targets, policy, key)
    if corked and metrics is not None:
        metrics.ws_messages_out += corked  # its bytes are counted when flushed
    return delivered
