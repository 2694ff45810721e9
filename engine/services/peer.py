"""Who is on the other end of the worker socket, and may they be there.

The socket file's mode (0600 by default) keeps other users out while the engine
runs; ``SO_PEERCRED`` (Linux) says which process and user connected, so a worker of
a user the engine does not trust is refused even when the mode lets it connect.
Workers do the same check on the engine (sdk/worker.py), since while the engine is
down anyone who can write the socket's directory may bind its path.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Collection
from typing import Any

__all__ = ["PEERCRED_SUPPORTED", "directory_risk", "peer_credentials", "peer_refusal"]

_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
PEERCRED_SUPPORTED = hasattr(socket, "SO_PEERCRED")


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process that connected (or listened) at the other end.

    Raises:
        OSError: the credentials cannot be read (also where SO_PEERCRED does not exist).
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None or sock is None:
        raise OSError("SO_PEERCRED is not available")
    raw = sock.getsockopt(socket.SOL_SOCKET, option, _CRED.size)
    pid, uid, gid = _CRED.unpack(raw)
    return pid, uid, gid


def peer_refusal(sock: Any, allowed_uids: Collection[int]) -> str | None:
    """Why a worker connection must be refused (None: it may stay).

    Allowed: the engine's own effective uid and ``allowed_uids``. Unreadable
    credentials are refused (closed rather than open), except on a platform without
    SO_PEERCRED at all, where the socket file's mode is the only protection.
    """
    if not PEERCRED_SUPPORTED:
        return None
    try:
        pid, uid, _gid = peer_credentials(sock)
    except OSError as exc:
        return f"cannot read the peer's credentials ({exc})"
    own = os.geteuid()
    if uid == own or uid in allowed_uids:
        return None
    listed = ",".join(str(u) for u in sorted(allowed_uids)) or "none"
    return (
        f"pid {pid} runs as uid {uid}, which is not allowed (the engine's uid is {own}; "
        f"--ipc-allowed-uids: {listed})"
    )


def directory_risk(path: str) -> tuple[bool, str] | None:
    """(serious, why) when the socket's directory lets other users take its path over."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except OSError:
        return None
    mode = st.st_mode
    if st.st_uid not in (0, os.geteuid()):
        return True, f"{directory} belongs to uid {st.st_uid}, who can replace the socket"
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        return True, f"{directory} is world-writable: any local user can replace the socket"
    if mode & stat.S_IWOTH:
        # Sticky (/tmp): others cannot remove our socket, but can bind the path while
        # the engine is down (it removes the file when it stops).
        return False, (
            f"{directory} is world-writable (sticky): while the engine is down another "
            "user may bind this path; workers refuse an engine of another uid"
        )
    return None
