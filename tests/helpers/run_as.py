"""Run a worker or a fake engine as another user, for the IPC peer-check tests.

    python tests/helpers/run_as.py UID worker MODULE[:ATTR] IPC_PATH
    python tests/helpers/run_as.py UID fake-engine IPC_PATH

The test interpreter lives under /root, which other users may not read, so it cannot
be exec'd as them (``subprocess.Popen(user=...)`` fails). This script starts as root,
imports everything it needs, then drops to UID (gid = UID, no supplementary groups)
and only then touches the socket.

``worker``: the real SDK worker (``sdk.run``) of the service; ``LINKD_ENGINE_UIDS``
from the environment applies as usual.

``fake-engine``: listens on IPC_PATH (its directory must be writable by UID), prints
``listening``, then for every connection one line: ``hello`` if the peer sent
anything within 2 s (a worker that trusted us sends its hello at once), else
``silent``; then closes it. Stdout is line-buffered.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def drop_to(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def fake_engine(uid: int, path: str) -> None:
    drop_to(uid)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("listening", flush=True)
    while True:
        conn, _ = listener.accept()
        conn.settimeout(2.0)
        try:
            data = conn.recv(65536)
        except (TimeoutError, OSError):
            data = b""
        print("hello" if data else "silent", flush=True)
        conn.close()


def worker(uid: int, target: str, ipc: str) -> None:
    import random  # noqa: F401 - imported now: the stdlib is unreadable after the drop
    import shutil  # noqa: F401

    import uvloop  # noqa: F401

    from sdk.__main__ import find_services
    from sdk.run import run

    services = find_services(target)
    drop_to(uid)
    run(services, ipc=ipc)


def main() -> None:
    uid, what, *rest = sys.argv[1:]
    if what == "fake-engine":
        fake_engine(int(uid), *rest)
    elif what == "worker":
        worker(int(uid), *rest)
    else:
        raise SystemExit(f"unknown role {what!r}")


if __name__ == "__main__":
    main()
