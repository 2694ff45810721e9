"""The engine's side of IPC version 2: a version-1 worker gets the documented reject, and
the engine checks the history query and publish itself (docs/ipc.md §4.3, §8)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, short_socket_path
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio

SVC = m.Registration("svc", events=["job.created"])


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return short_socket_path(tmp_path)


async def ask(worker: FakeWorker, msg: m.Query | m.Publish) -> m.Result:
    future: asyncio.Future[m.Result] = asyncio.get_running_loop().create_future()
    worker._queries[msg.id] = future
    worker.send(msg)
    return await asyncio.wait_for(future, 2.0)


async def test_a_version_1_worker_is_rejected_with_version(ipc_path: str) -> None:
    async with (
        running_engine(ipc_path=ipc_path) as engine,
        FakeWorker(ipc_path, SVC, versions=[1]) as worker,
    ):
        await worker.connect()
        answer = await worker.hello()
        assert isinstance(answer, m.Reject) and answer.code == "VERSION"
        assert "version 2" in answer.message
        assert "svc" not in engine.state.registry.services


async def test_the_engine_refuses_bad_history_queries(ipc_path: str) -> None:
    async with running_engine(ipc_path=ipc_path), FakeWorker(ipc_path, SVC) as worker:
        await worker.start()
        for i, query in enumerate(
            (
                m.Query(0, "history"),
                m.Query(0, "history", room="r", limit=0),
                m.Query(0, "history", room="r", limit=1001),
                m.Query(0, "history", room="r", since=-1),
            ),
            start=1,
        ):
            result = await ask(
                worker,
                m.Query(i, query.what, room=query.room, since=query.since, limit=query.limit),
            )
            assert result.error is not None and result.error.code == "BAD_REQUEST", result
        ok = await ask(worker, m.Query(10, "history", room="r", limit=1000))
        assert ok.json is not None
        assert orjson.loads(ok.json)["events"] == []


async def test_publish_answers_its_subscribers_and_refuses_what_it_cannot_take(
    ipc_path: str,
) -> None:
    async with running_engine(ipc_path=ipc_path), FakeWorker(ipc_path, SVC) as worker:
        await worker.start()
        result = await ask(worker, m.Publish(1, "job.created", b'{"n":1}'))
        assert result.json is not None and orjson.loads(result.json) == {"services": ["svc"]}
        result = await ask(worker, m.Publish(2, "bad name", b"1"))
        assert result.error is not None and result.error.code == "BAD_REQUEST"
        result = await ask(worker, m.Publish(3, "job.created", b"1" * (64 * 1024 + 1)))
        assert result.error is not None and result.error.code == "PAYLOAD_TOO_LARGE"
