"""Every buffer the protocol cores keep has a limit here, with its default and why."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits shared by the sans-I/O cores and the engine shell.

    Attributes:
        max_header_bytes: request line plus headers. 16 KiB is h11's default and sits
            between nginx (8 KiB per line) and Node (16 KiB total).
        max_body_bytes: an HTTP request body; above it the reply is 413.
        max_message_bytes: one WebSocket message after reassembly and inflation
            (1 MiB, the websockets library's ``max_size``); above it → 1009.
        inflate_chunk_bytes: the most a single ``decompress`` call may produce past the
            remaining budget, so a bomb is refused having inflated at most
            ``max_message_bytes + inflate_chunk_bytes``.
        max_inbound_queue: WebSocket messages received but not yet handled before we
            stop reading the socket; reading resumes at a quarter of it.
        write_high_water / write_low_water: transport write-buffer marks for paths
            that await ``drain()`` (per-request replies). An HTTP connection above the
            high mark takes no further pipelined request and is not read until it
            drains below the low one: what a client that does not read can make us
            hold is the high mark plus one response.
        max_outbound_bytes: a connection whose unsent bytes pass this is a slow
            consumer (close 1013 by default); fan-out never waits for it.
        compression_threshold: messages shorter than this go uncompressed; deflate
            costs more CPU than it saves on tiny frames.
        max_message_fragments: frames of one WebSocket message (0: no limit); above
            it → 1009. Empty continuation frames add nothing to ``max_message_bytes``
            but each costs a parse and was kept until the message ended; 1024 still
            lets a 1 MiB message arrive in 1 KiB fragments (browsers do not fragment).
    """

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    max_message_bytes: int = 1024 * 1024
    inflate_chunk_bytes: int = 64 * 1024
    max_inbound_queue: int = 16
    write_high_water: int = 64 * 1024
    write_low_water: int = 16 * 1024
    max_outbound_bytes: int = 4 * 1024 * 1024
    compression_threshold: int = 128
    max_message_fragments: int = 1024

    def __post_init__(self) -> None:
        for name in (
            "max_header_bytes",
            "max_body_bytes",
            "max_message_bytes",
            "inflate_chunk_bytes",
            "max_inbound_queue",
            "write_high_water",
            "max_outbound_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.write_low_water <= self.write_high_water:
            raise ValueError("write_low_water must be between 0 and write_high_water")
        if self.compression_threshold < 0:
            raise ValueError("compression_threshold must not be negative")
        if self.max_message_fragments < 0:
            raise ValueError("max_message_fragments must not be negative")
