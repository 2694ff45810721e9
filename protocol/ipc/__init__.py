"""The engine ⇄ worker IPC protocol (docs/ipc.md): framing, messages, codec, state machine."""

from . import messages
from .codec import ENGINE_RECEIVES, WORKER_RECEIVES, decode, encode
from .conn import IpcConn, IpcState, PeerFrameTooLarge, Role
from .errors import IpcError, IpcProtocolError
from .framing import FrameDecoder, encode_frame
from .messages import PROTOCOL_VERSION

__all__ = [
    "ENGINE_RECEIVES",
    "PROTOCOL_VERSION",
    "WORKER_RECEIVES",
    "FrameDecoder",
    "IpcConn",
    "IpcError",
    "IpcProtocolError",
    "IpcState",
    "PeerFrameTooLarge",
    "Role",
    "decode",
    "encode",
    "encode_frame",
    "messages",
]
