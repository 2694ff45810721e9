"""Why an IPC peer was disconnected: one code per rule of docs/ipc.md §6."""

from __future__ import annotations

from enum import StrEnum

from ..errors import RemoteProtocolError

__all__ = ["IpcError", "IpcProtocolError"]


class IpcError(StrEnum):
    #: The length prefix announced more than the receiver's ``max_frame``.
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    #: A zero-length frame.
    EMPTY_FRAME = "EMPTY_FRAME"
    #: The frame is not well-formed CBOR, or has trailing bytes after the item.
    BAD_CBOR = "BAD_CBOR"
    #: CBOR outside the profile: tags, indefinite lengths, duplicate keys, non-string
    #: map keys, undefined/simple values, nesting deeper than 32.
    UNSUPPORTED_CBOR = "UNSUPPORTED_CBOR"
    #: The top-level item is not a map, or has no text ``t``.
    NOT_A_MESSAGE = "NOT_A_MESSAGE"
    #: ``t`` names no message type this side may receive.
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    #: A required field is absent.
    MISSING_FIELD = "MISSING_FIELD"
    #: A field has the wrong type or an invalid value, or an unknown field is present.
    BAD_FIELD = "BAD_FIELD"
    #: A message that is not allowed in the current state (e.g. anything before hello,
    #: a reply to an id that is not pending).
    UNEXPECTED = "UNEXPECTED"
    #: No protocol version in common.
    VERSION = "VERSION"


class IpcProtocolError(RemoteProtocolError):
    """The IPC peer broke the protocol; the connection must be closed.

    Attributes:
        reason: which rule (an ``IpcError``).
    """

    def __init__(self, reason: IpcError, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
