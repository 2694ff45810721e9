"""Linkd's sans-I/O protocol cores: bytes in, events out; events in, bytes out.

Nothing here touches a socket, a clock or an event loop, and nothing imports
``engine``: the same code runs under asyncio, in tests and under the fuzzers.
"""

from .codes import CloseCode, ErrorCode
from .errors import (
    LinkdError,
    LocalProtocolError,
    MessageTooBig,
    ProtocolError,
    RemoteProtocolError,
)
from .limits import Limits

__all__ = [
    "CloseCode",
    "ErrorCode",
    "Limits",
    "LinkdError",
    "LocalProtocolError",
    "MessageTooBig",
    "ProtocolError",
    "RemoteProtocolError",
]
