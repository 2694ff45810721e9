"""The Linkd service SDK: define a Service, run it against the engine over IPC."""

from .context import (
    AuthUser,
    Context,
    Emitter,
    Headers,
    HttpContext,
    PresenceContext,
    Socket,
    WsContext,
    WsMessage,
)
from .errors import (
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
)
from .response import Response
from .run import run, start_services
from .service import Service, WebSocketOptions
from .worker import Worker
from .ws import Middleware, Next, WsGroup, WsRouter

__all__ = [
    "AuthUser",
    "BadRequestError",
    "Context",
    "Emitter",
    "ForbiddenError",
    "Headers",
    "HttpContext",
    "InternalError",
    "LinkdError",
    "Middleware",
    "Next",
    "NotFoundError",
    "OverloadedError",
    "PresenceContext",
    "RateLimitedError",
    "Response",
    "Service",
    "ServiceTimeoutError",
    "ServiceUnavailableError",
    "Socket",
    "UnauthorizedError",
    "UnknownMessageTypeError",
    "ValidationError",
    "WebSocketOptions",
    "Worker",
    "WsContext",
    "WsGroup",
    "WsMessage",
    "WsRouter",
    "run",
    "start_services",
]
