"""The one table of WebSocket close codes and client-facing error codes.

Close codes follow RFC 6455 §7.4.1; error codes are the ``error.code`` strings of
the client contract (docs/ipc.md §4.2), each tied to exactly one HTTP status. Engine,
SDK and docs all read from here, so a code cannot mean two things.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = ["CloseCode", "ErrorCode"]


class CloseCode(IntEnum):
    """WebSocket close codes the engine sends or understands (RFC 6455 §7.4.1)."""

    #: The purpose of the connection has been fulfilled.
    NORMAL = 1000
    #: The engine is shutting down or draining; reconnect (elsewhere).
    GOING_AWAY = 1001
    #: The peer broke RFC 6455 framing rules.
    PROTOCOL_ERROR = 1002
    #: A data type the endpoint does not accept (binary where a service takes none).
    UNSUPPORTED_DATA = 1003
    #: Reserved: no status code was present in the close frame. Never sent.
    NO_STATUS = 1005
    #: Reserved: the connection dropped without a close frame. Never sent.
    ABNORMAL = 1006
    #: Invalid UTF-8 in a text message or close reason.
    INVALID_PAYLOAD = 1007
    #: Policy violation: sustained rate-limit abuse, expired credentials.
    POLICY_VIOLATION = 1008
    #: A message (after inflation) was larger than the configured limit.
    MESSAGE_TOO_BIG = 1009
    #: Unexpected condition inside the engine; no detail is disclosed.
    INTERNAL_ERROR = 1011
    #: Slow consumer or overload: try again later.
    TRY_AGAIN_LATER = 1013


class ErrorCode(StrEnum):
    """Error codes of acks and HTTP error bodies; ``.status`` is the HTTP mapping."""

    BAD_REQUEST = "BAD_REQUEST"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    UPGRADE_REQUIRED = "UPGRADE_REQUIRED"
    RATE_LIMITED = "RATE_LIMITED"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    TIMEOUT = "TIMEOUT"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    OVERLOADED = "OVERLOADED"
    INTERNAL = "INTERNAL"

    @property
    def status(self) -> int:
        """The HTTP status this code maps to."""
        return _STATUS[self]

    @classmethod
    def for_status(cls, status: int) -> ErrorCode:
        """The canonical code for an HTTP error status (500 → INTERNAL when unknown)."""
        return _BY_STATUS.get(status, cls.INTERNAL if status >= 500 else cls.BAD_REQUEST)


_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNKNOWN_MESSAGE_TYPE: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.UPGRADE_REQUIRED: 426,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.INTERNAL: 500,
}

# Several codes share a status (404, 503); the first listed one is canonical.
_BY_STATUS: dict[int, ErrorCode] = {}
for _code, _status in _STATUS.items():
    _BY_STATUS.setdefault(_status, _code)

if set(_STATUS) != set(ErrorCode):  # pragma: no cover - import-time table check
    raise RuntimeError("every ErrorCode needs exactly one HTTP status")
