"""The IPC listener: socket file permissions, stale files, a live engine, restarts."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from engine import Engine
from engine.services.listener import IpcAddressInUse
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.http_client import RawHttp
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio

REG = m.Registration("svc", http=[m.HttpRoute("ping", "GET", "/svc/ping")])


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return short_socket_path(tmp_path)


async def pong(worker: FakeWorker, request: m.HttpRequest) -> m.Reply:
    return reply_json(request, {"pong": worker.pid})


async def assert_serves(engine: Engine, ipc_path: str, pid: int = 1) -> None:
    """A new worker registers on ``ipc_path`` and answers through ``engine``."""
    async with FakeWorker(ipc_path, REG, pid=pid) as worker:
        worker.on("http", pong)
        await worker.start()
        async with RawHttp(engine.port) as client:
            resp = await client.request("GET", "/svc/ping")
        assert resp.status == 200
        assert resp.json() == {"pong": pid}


def exists(path: str) -> bool:
    return os.path.lexists(path)


def mode_of(path: str) -> int:
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    return stat.S_IMODE(st.st_mode)


async def test_socket_file_is_private_by_default(ipc_path: str) -> None:
    async with running_engine(ipc_path=ipc_path) as engine:
        assert mode_of(ipc_path) == 0o600
        await assert_serves(engine, ipc_path)


async def test_socket_mode_is_configurable(ipc_path: str) -> None:
    async with running_engine(ipc_path=ipc_path, ipc_mode=0o660) as engine:
        assert mode_of(ipc_path) == 0o660
        await assert_serves(engine, ipc_path)


async def test_stale_socket_file_is_replaced(ipc_path: str) -> None:
    # A socket file left by a dead engine: bound, then closed without unlink.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(ipc_path)
    dead.listen(1)
    dead.close()
    assert stat.S_ISSOCK(os.lstat(ipc_path).st_mode)
    async with running_engine(ipc_path=ipc_path) as engine:
        assert mode_of(ipc_path) == 0o600
        await assert_serves(engine, ipc_path)


async def test_second_engine_on_a_live_socket_refuses_to_start(ipc_path: str) -> None:
    async with running_engine(ipc_path=ipc_path) as first:
        inode = os.lstat(ipc_path).st_ino
        second = Engine(make_config(ipc_path=ipc_path))
        with pytest.raises(IpcAddressInUse):
            await second.start()
        await second.stop()
        # The first engine's socket file is untouched and it keeps serving.
        assert os.lstat(ipc_path).st_ino == inode
        await assert_serves(first, ipc_path)


async def test_a_path_that_is_not_a_socket_is_not_removed(ipc_path: str) -> None:
    plain = Path(ipc_path)
    plain.write_bytes(b"precious")  # noqa: ASYNC240
    engine = Engine(make_config(ipc_path=ipc_path))
    with pytest.raises(IpcAddressInUse):
        await engine.start()
    await engine.stop()
    assert plain.read_bytes() == b"precious"  # noqa: ASYNC240


async def test_socket_removed_on_stop_and_recreated_on_restart(ipc_path: str) -> None:
    async with FakeWorker(ipc_path, REG, close_on_drain=True) as worker:
        async with running_engine(ipc_path=ipc_path) as engine:
            worker.on("http", pong)
            await worker.start()
            async with RawHttp(engine.port) as client:
                assert (await client.request("GET", "/svc/ping")).status == 200
        # The engine dropped its worker and removed its socket file.
        await worker.wait_closed(2.0)
        assert not exists(ipc_path)
    async with running_engine(ipc_path=ipc_path) as engine:
        assert mode_of(ipc_path) == 0o600
        await assert_serves(engine, ipc_path, pid=3)
    assert not exists(ipc_path)
