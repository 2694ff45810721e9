"""The Unix socket workers connect to: created private (0600), stale files replaced,
a live engine on the same path never displaced, a risky directory reported. Each
connecting worker's user is checked (engine/services/peer.py, in IpcProtocol)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat

from engine.services.connection import IpcProtocol
from engine.services.host import Host
from engine.services.peer import PEERCRED_SUPPORTED, directory_risk
from engine.services.registry import Registry

__all__ = ["IpcAddressInUse", "start_ipc_server"]

log = logging.getLogger("linkd.ipc")


class IpcAddressInUse(OSError):
    """Another live process answers on the IPC socket path."""


def _claim_path(path: str) -> None:
    """Remove a stale socket file; refuse if something listens there or it is no socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise IpcAddressInUse(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        # Nobody listens: the file was left by an engine that died.
        log.info("replacing stale IPC socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise IpcAddressInUse(errno.EADDRINUSE, f"another engine is already listening on {path}")


def _check_directory(path: str) -> None:
    """Say so when the socket's directory lets another user take the path over."""
    risk = directory_risk(path)
    if risk is not None:
        serious, why = risk
        log.log(
            logging.WARNING if serious else logging.INFO,
            "IPC socket %s: %s; put it in a directory only the engine's user can write "
            "(e.g. /run/linkd)",
            path,
            why,
        )
    if not PEERCRED_SUPPORTED:
        log.warning("SO_PEERCRED is not available here: worker users are not checked")


async def start_ipc_server(
    state: Host, registry: Registry, path: str, mode: int, max_frame: int
) -> asyncio.Server:
    _check_directory(path)
    _claim_path(path)
    # Create the socket file with the final permissions: no window in which another
    # user could connect between bind() and chmod().
    old_umask = os.umask(0o777 & ~mode)
    try:
        server = await state.loop.create_unix_server(
            lambda: IpcProtocol(state, registry, max_frame), path
        )
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    log.info("workers connect on %s (mode %o)", path, mode)
    return server
