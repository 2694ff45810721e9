"""Errors a handler raises to answer with a code of the shared table (protocol/codes.py).

The family itself lives in ``protocol/errors.py``, shared with the engine: one class
per ``ErrorCode``, each with its HTTP status. This module re-exports it under the
names the SDK has always had (``from sdk import ForbiddenError``).
"""

from __future__ import annotations

import orjson

from protocol.codes import ErrorCode
from protocol.errors import (
    BadRequestError,
    ForbiddenError,
    InternalError,
    LinkdError,
    NotFoundError,
    OverloadedError,
    RateLimitedError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    UnauthorizedError,
    UnknownMessageTypeError,
    ValidationError,
    error_class,
)
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


def error_for_code(info: m.ErrorInfo) -> LinkdError:
    """The exception for an ``ErrorInfo`` the engine sent (e.g. a failed query)."""
    details = None if info.details is None else orjson.loads(info.details)
    try:
        code = ErrorCode(info.code)
    except ValueError:
        return InternalError(info.message, details=details)
    return error_class(code)(info.message, details=details)
