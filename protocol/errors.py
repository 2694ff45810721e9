"""Exceptions of the protocol cores, split by who is at fault (the h11/wsproto pattern).

``LocalProtocolError``: our own code misused a core (a bug: fix the caller).
``RemoteProtocolError``: the peer sent something invalid; it carries the HTTP status
or WebSocket close code to answer with, so the shell maps errors in one place.
"""

from __future__ import annotations

from .codes import CloseCode

__all__ = [
    "LinkdError",
    "LocalProtocolError",
    "MessageTooBig",
    "ProtocolError",
    "RemoteProtocolError",
]


class LinkdError(Exception):
    """Base class of every exception raised on purpose by Linkd."""


class ProtocolError(LinkdError):
    """A protocol rule was broken. Not raised directly: see the two subclasses."""

    def __init__(
        self,
        message: str,
        *,
        status_hint: int = 400,
        close_code: CloseCode = CloseCode.PROTOCOL_ERROR,
    ) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError")
        super().__init__(message)
        #: HTTP status to answer with, when the error happens before an upgrade.
        self.status_hint = status_hint
        #: WebSocket close code to answer with, after an upgrade.
        self.close_code = close_code


class LocalProtocolError(ProtocolError):
    """Our side tried to do something the protocol forbids in the current state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; answer with the hint and close."""


class MessageTooBig(RemoteProtocolError):
    """A body or message passed its configured limit (HTTP 413, WebSocket 1009)."""

    def __init__(self, message: str, *, status_hint: int = 413) -> None:
        super().__init__(message, status_hint=status_hint, close_code=CloseCode.MESSAGE_TOO_BIG)
