"""What a request can raise: the server refused it, or the connection was not there."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ClientError", "ConnectionLostError"]


class ClientError(Exception):
    """An error ack: the server received the request and refused it.

    Attributes:
        code: the error code (``"VALIDATION_ERROR"``, ``"FORBIDDEN"``...).
        message: the human-readable message.
        details: the error's ``details`` (validation: field -> problem), or None.
        error: the whole error object (``retryAfter`` for ``RATE_LIMITED``...).
    """

    def __init__(
        self, code: str, message: str, details: Any = None, error: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.error: dict[str, Any] = dict(error or {})


class ConnectionLostError(ConnectionError):
    """The connection is not open, or it closed before the ack arrived.

    A request is never resent on the next connection: the server may or may not have
    handled it.
    """
