"""Errors a handler raises to answer with a code of the shared table (DESIGN §2)."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from protocol.codes import ErrorCode
from protocol.errors import LinkdError as _ProtocolLinkdError
from protocol.ipc import messages as m

__all__ = [
    "BadRequestError",
    "ForbiddenError",
    "InternalError",
    "LinkdError",
    "NotFoundError",
    "OverloadedError",
    "RateLimitedError",
    "ServiceTimeoutError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "UnknownMessageTypeError",
    "ValidationError",
    "error_for_code",
]


class LinkdError(_ProtocolLinkdError):
    """An error with a client-facing code; raise a subclass from a handler.

    The engine turns it into an error ack (``{"code", "message"[, "details"]}``) or an
    HTTP error with the code's status. ``INTERNAL`` messages never reach clients.

    Args:
        message: what the client reads.
        code: overrides the class's code (any ``ErrorCode``).
        details: JSON-able extra detail, sent as the error's ``details``.
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

    def to_info(self) -> m.ErrorInfo:
        """The IPC ``ErrorInfo`` of this error."""
        details = None if self.details is None else orjson.dumps(self.details)
        return m.ErrorInfo(code=self.code.value, message=self.message, details=details)


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
        details: Any = None,
    ) -> None:
        super().__init__(message, details=fields if details is None else details)
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


class RateLimitedError(LinkdError):
    code = ErrorCode.RATE_LIMITED
    default_message = "rate limited"


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


_BY_CODE: dict[str, type[LinkdError]] = {
    cls.code.value: cls
    for cls in (
        BadRequestError,
        ValidationError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        UnknownMessageTypeError,
        RateLimitedError,
        ServiceTimeoutError,
        ServiceUnavailableError,
        OverloadedError,
        InternalError,
    )
}


def error_for_code(info: m.ErrorInfo) -> LinkdError:
    """The exception for an ``ErrorInfo`` the engine sent (e.g. a failed query)."""
    details = None if info.details is None else orjson.loads(info.details)
    cls = _BY_CODE.get(info.code)
    if cls is None:
        try:
            return LinkdError(info.message, code=ErrorCode(info.code), details=details)
        except ValueError:
            return InternalError(info.message, details=details)
    if cls is ValidationError:
        return ValidationError(info.message, details=details)
    return cls(info.message, details=details)
