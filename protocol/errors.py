"""Exceptions of Linkd: the error family of the code table, and the protocol cores' own.

``LinkdError`` and one subclass per ``ErrorCode`` (``BadRequestError`` ...
``InternalError``): an error with a client-facing code, its HTTP status and message,
shared by the engine and the SDK (``sdk.errors`` re-exports them). Built from the
table in ``codes.py``: every code has exactly one class (checked at import).

``LocalProtocolError``: our own code misused a core (a bug: fix the caller).
``RemoteProtocolError``: the peer sent something invalid; it carries the HTTP status
or WebSocket close code to answer with, so the shell maps errors in one place (the
h11/wsproto pattern).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from .codes import CloseCode, ErrorCode

if TYPE_CHECKING:
    from .ipc.messages import ErrorInfo

__all__ = [
    "BadRequestError",
    "ForbiddenError",
    "HeadersTooLargeError",
    "InternalError",
    "LinkdError",
    "LocalProtocolError",
    "MessageTooBig",
    "MethodNotAllowedError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RateLimitedError",
    "RemoteProtocolError",
    "RequestTimeoutError",
    "ServiceTimeoutError",
    "ServiceUnavailableError",
    "TooManyConnectionsError",
    "UnauthorizedError",
    "UnknownMessageTypeError",
    "UpgradeRequiredError",
    "ValidationError",
    "error_class",
    "error_for",
]


class LinkdError(Exception):
    """Base class of every exception raised on purpose by Linkd.

    Those raised with a client-facing code are answered with it: an error ack
    (``{"code", "message"[, "details"]}``) or an HTTP error with the code's status.
    ``INTERNAL`` messages never reach clients.

    Args:
        message: what the client reads (the class's default when omitted).
        code: overrides the class's code (any ``ErrorCode``).
        details: JSON-able extra detail, sent as the error's ``details``; or, on the
            engine side, the JSON text a worker sent (``bytes``), pasted as is.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    default_message: ClassVar[str] = "internal error"

    def __init__(
        self, message: str | None = None, *, code: ErrorCode | None = None, details: Any = None
    ) -> None:
        self.message = message if message is not None else self.default_message
        super().__init__(self.message)
        if code is not None:
            # An instance attribute shadows the class default for this one error.
            self.code = code  # type: ignore[misc]
        self.details = details

    @property
    def status(self) -> int:
        """The HTTP status of this error's code."""
        return self.code.status

    def details_json(self) -> bytes | None:
        """``details`` as JSON text (bytes are JSON text already)."""
        if self.details is None or isinstance(self.details, bytes):
            return self.details
        return orjson.dumps(self.details)

    def to_info(self) -> ErrorInfo:
        """The IPC ``ErrorInfo`` of this error."""
        # Imported here: protocol.ipc imports this module.
        from .ipc.messages import ErrorInfo

        return ErrorInfo(code=self.code.value, message=self.message, details=self.details_json())


class BadRequestError(LinkdError):
    code = ErrorCode.BAD_REQUEST
    default_message = "bad request"


class ValidationError(LinkdError):
    """Invalid input; ``fields`` maps each bad field to what is wrong with it.

    ``ValidationError("bad", fields={"room": "must be a UUID"})`` → ``details``
    ``{"room": "must be a UUID"}``.
    """

    code = ErrorCode.VALIDATION_ERROR
    default_message = "validation failed"

    def __init__(
        self,
        message: str | None = None,
        *,
        fields: dict[str, Any] | None = None,
        code: ErrorCode | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message, code=code, details=fields if details is None else details)
        self.fields = fields or {}


class UnauthorizedError(LinkdError):
    code = ErrorCode.UNAUTHORIZED
    default_message = "authentication required"


class ForbiddenError(LinkdError):
    code = ErrorCode.FORBIDDEN
    default_message = "forbidden"


class NotFoundError(LinkdError):
    code = ErrorCode.NOT_FOUND
    default_message = "not found"


class UnknownMessageTypeError(LinkdError):
    code = ErrorCode.UNKNOWN_MESSAGE_TYPE
    default_message = "unknown message type"


class MethodNotAllowedError(LinkdError):
    code = ErrorCode.METHOD_NOT_ALLOWED
    default_message = "method not allowed"


class PayloadTooLargeError(LinkdError):
    code = ErrorCode.PAYLOAD_TOO_LARGE
    default_message = "payload too large"


class HeadersTooLargeError(LinkdError):
    code = ErrorCode.HEADERS_TOO_LARGE
    default_message = "headers too large"


class RequestTimeoutError(LinkdError):
    code = ErrorCode.REQUEST_TIMEOUT
    default_message = "request timeout"


class UpgradeRequiredError(LinkdError):
    code = ErrorCode.UPGRADE_REQUIRED
    default_message = "upgrade required"


class RateLimitedError(LinkdError):
    code = ErrorCode.RATE_LIMITED
    default_message = "rate limited"


class TooManyConnectionsError(LinkdError):
    code = ErrorCode.TOO_MANY_CONNECTIONS
    default_message = "too many connections"


class ServiceTimeoutError(LinkdError):
    code = ErrorCode.TIMEOUT
    default_message = "timeout"


class ServiceUnavailableError(LinkdError):
    code = ErrorCode.SERVICE_UNAVAILABLE
    default_message = "service unavailable"


class OverloadedError(LinkdError):
    code = ErrorCode.OVERLOADED
    default_message = "overloaded"


class InternalError(LinkdError):
    code = ErrorCode.INTERNAL
    default_message = "internal error"


_BY_CODE: dict[ErrorCode, type[LinkdError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        ValidationError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        UnknownMessageTypeError,
        MethodNotAllowedError,
        PayloadTooLargeError,
        HeadersTooLargeError,
        RequestTimeoutError,
        UpgradeRequiredError,
        RateLimitedError,
        TooManyConnectionsError,
        ServiceTimeoutError,
        ServiceUnavailableError,
        OverloadedError,
        InternalError,
    )
}

if set(_BY_CODE) != set(ErrorCode):  # pragma: no cover - import-time table check
    raise RuntimeError("every ErrorCode needs exactly one error class")


def error_class(code: ErrorCode) -> type[LinkdError]:
    """The class of the family for ``code``."""
    return _BY_CODE[code]


def error_for(code: ErrorCode, message: str | None = None, details: Any = None) -> LinkdError:
    """An error of the family for ``code`` (``details``: see ``LinkdError``)."""
    return _BY_CODE[code](message, details=details)


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
