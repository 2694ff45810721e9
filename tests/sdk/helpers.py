"""A worker running a service against a FakeEngine on a Unix socket in a short tmp dir."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk import Service, Worker
from sdk.testing import EnginePeer, FakeEngine


@contextlib.contextmanager
def socket_path() -> Iterator[str]:
    # pytest's tmp_path can pass the 108-byte limit of Unix socket paths.
    folder = tempfile.mkdtemp(prefix="sdk", dir="/tmp")
    try:
        yield str(Path(folder) / "ipc.sock")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (state without an event to wait on) for up to 5 s."""
    async with asyncio.timeout(5):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


@dataclass
class Running:
    engine: FakeEngine
    peer: EnginePeer
    worker: Worker
    task: asyncio.Task[None]
    path: str

    async def stop(self) -> None:
        self.worker.stop()
        async with asyncio.timeout(5):
            await self.task


@asynccontextmanager
async def running(
    service: Service,
    *,
    engine: dict[str, Any] | None = None,
    **worker_options: Any,
) -> AsyncIterator[Running]:
    """Start a FakeEngine and a Worker for ``service``; yield once it is welcomed."""
    with socket_path() as path:
        fake = await FakeEngine(path, **(engine or {})).start()
        worker = Worker(service, path, **worker_options)
        task = asyncio.get_running_loop().create_task(worker.run())
        try:
            peer = await fake.worker()
            async with asyncio.timeout(5):
                await worker.connected.wait()
            yield Running(fake, peer, worker, task, path)
        finally:
            worker.stop()
            try:
                async with asyncio.timeout(5):
                    await task
            finally:
                await fake.close()


def chat_service(**options: Any) -> Service:
    """A small service exercising most of the surface."""
    from sdk import WebSocketOptions

    return Service(
        "chat",
        version="1.2.3",
        websocket=WebSocketOptions(path="/ws/chat", **options),
    )
