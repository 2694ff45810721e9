"""Published API documents (docs/server-api.md, "Published API documents"): OpenAPI 3.1
of the server API and of the services' HTTP actions, AsyncAPI 3.0 of each service's
WebSocket messages, built from the live registry of a real engine process with real
SDK workers; the bounds on what a worker may register as documentation."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from openapi_spec_validator import validate

from protocol.ipc import codec
from protocol.ipc import messages as m
from sdk import Service, WebSocketOptions, WsContext
from tests.helpers.fake_worker import FakeWorker, short_socket_path
from tests.helpers.proc import EngineProcess, free_port
from tests.helpers.server import running_engine
from tests.integration.support import (
    DEMO,
    Client,
    WorkerProcess,
    demo_engine,
    ipc_dir,
    wait_http,
)

DOCUMENTED = "tests.helpers.services.documented"


def admin_get(port: int, path: str, method: str = "GET") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, orjson.loads(body) if body else None
    finally:
        conn.close()


@contextlib.contextmanager
def engine_with(*services: str, ipc: str | None = None) -> Iterator[tuple[EngineProcess, int]]:
    admin = free_port()
    with demo_engine("--admin-listen", f"127.0.0.1:{admin}", services=services, ipc=ipc) as eng:
        yield eng, admin


def asyncapi_structure(doc: dict[str, Any]) -> None:
    """The parts of AsyncAPI 3.0 the document must have, and every local $ref resolving."""
    assert doc["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= doc["info"].keys()
    for server in doc["servers"].values():
        assert {"host", "protocol"} <= server.keys()
    for name, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), name
    refs: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("$ref"), str):
                refs.append(value["$ref"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(doc)
    for ref in refs:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]  # KeyError: a dangling reference


def test_documents_describe_the_workers_routes_and_metadata() -> None:
    with engine_with(DEMO, DOCUMENTED) as (eng, admin):
        status, services = admin_get(admin, "/openapi.json")
        assert status == 200
        validate(services)
        paths = services["paths"]
        get_room = paths["/documented/rooms/{id}"]["get"]
        assert get_room["operationId"] == "documented.get-room"
        assert get_room["summary"] == "One room"
        assert get_room["parameters"] == [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
        ]
        room_schema = get_room["responses"]["200"]["content"]["application/json"]["schema"]
        assert room_schema["required"] == ["id", "name"]
        assert get_room["security"] == []
        rename = paths["/documented/rooms/{id}/name"]["put"]
        assert rename["security"] == [{"bearer": []}]
        assert "401" in rename["responses"]
        assert rename["requestBody"]["content"]["application/json"]["schema"]["properties"] == {
            "name": {"type": "string"}
        }
        assert paths["/documented/plain"]["get"]["security"] == [{"bearer": []}, {}]
        assert "documented.health" in {
            op["operationId"] for item in paths.values() for op in item.values()
        }
        assert any(p.startswith("/demo/") for p in paths)  # every registered service

        # What the document says the action answers is what it answers.
        status, body = eng.request("GET", "/documented/rooms/7")
        assert status == 200
        jsonschema.validate(orjson.loads(body), room_schema)

        status, api = admin_get(admin, "/api/openapi.json")
        assert status == 200
        validate(api)
        assert api["components"]["securitySchemes"]["apikey"] == {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": api["components"]["securitySchemes"]["apikey"]["description"],
        }
        assert "apikey <key>" in api["components"]["securitySchemes"]["apikey"]["description"]
        assert sorted(api["paths"]) == sorted(
            f"/api/{name}"
            for name in (
                "publish",
                "broadcast",
                "presence",
                "presence_stats",
                "rooms",
                "history",
                "disconnect",
                "subscribe",
                "unsubscribe",
                "info",
            )
        )

        status, index = admin_get(admin, "/asyncapi.json")
        assert status == 200
        assert index["services"]["documented"] == {
            "path": "/ws/documented",
            "document": "/asyncapi/documented.json",
        }
        assert "demo" in index["services"]


def test_asyncapi_states_types_acks_and_events_as_the_engine_behaves() -> None:
    with engine_with(DOCUMENTED) as (eng, admin):
        status, doc = admin_get(admin, "/asyncapi/documented.json")
        assert status == 200
        asyncapi_structure(doc)
        channel = doc["channels"]["endpoint"]
        assert channel["address"] == "/ws/documented"
        assert doc["servers"]["engine"]["protocol"] == "ws"
        messages = channel["messages"]
        send = messages["chat.send"]
        assert send["summary"] == "Send a message to a room"
        assert send["payload"]["properties"]["data"]["required"] == ["room", "text"]
        assert send["x-linkd-idempotent"] is True and send["x-linkd-ordered"] is True
        assert messages["typing"]["x-linkd-idempotent"] is False
        assert messages["typing"]["x-linkd-ordered"] is False
        assert messages["admin.kick"]["summary"] == "Kick a user"  # a group's handler
        assert messages["group.admin"]["payload"]["properties"]["type"]["pattern"] == "^admin\\."
        assert "any" not in messages  # no catch-all
        assert "linkd.refresh" in messages  # the path verifies tokens (auth optional)
        assert messages["chat.message"]["x-linkd-source"] == "service"
        assert messages["chat.message"]["summary"] == "A message in a room"
        for engine_event in ("linkd.recovered", "linkd.skip", "linkd.rate_limited"):
            assert messages[engine_event]["x-linkd-source"] == "engine"
        operations = doc["operations"]
        receive_send = operations["receive.chat.send"]
        assert receive_send["action"] == "receive"
        assert receive_send["reply"]["messages"] == [
            {"$ref": "#/channels/endpoint/messages/chat.send.ack"}
        ]
        assert operations["send.chat.message"]["action"] == "send"

        async def exchange() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
            async with Client.open(eng.port, "/ws/documented") as client:
                ok = await client.request("chat.send", {"room": "r", "text": "hi"})
                refused = await client.request("nope.nothing", {})
                await client.send("chat.send", {"room": "r", "text": "no id"})
                await client.send("nope.nothing")  # no id: an error event
                event = await client.events.get()
                return ok, refused, event

        ok, refused, event = asyncio.run(exchange())
        ack = messages["chat.send.ack"]["payload"]
        jsonschema.validate(ok, ack)
        assert ok["data"] == {"sent": True}
        jsonschema.validate(ok["data"], send_result(messages))
        jsonschema.validate(refused, messages["error"]["payload"])  # an engine refusal...
        assert refused["error"]["code"] == "UNKNOWN_MESSAGE_TYPE" and "id" in refused  # ...acked
        jsonschema.validate(event, messages["error"]["payload"])
        assert "id" not in event  # the success without id sent nothing before it


def send_result(messages: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = messages["chat.send.ack"]["payload"]["oneOf"][0]
    return dict(result["properties"]["data"])


def test_a_worker_that_registers_later_appears() -> None:
    with ipc_dir() as directory:
        ipc = str(Path(directory) / "l.sock")
        with engine_with(DEMO, ipc=ipc) as (eng, admin):
            assert admin_get(admin, "/asyncapi/documented.json")[0] == 404
            _, before = admin_get(admin, "/openapi.json")
            assert not any(p.startswith("/documented/") for p in before["paths"])
            worker = WorkerProcess(DOCUMENTED, ipc)
            try:
                wait_http(eng, "/documented/ready")
                status, doc = admin_get(admin, "/asyncapi/documented.json")
                assert status == 200 and doc["info"]["version"] == "1.2.3"
                _, after = admin_get(admin, "/openapi.json")
                assert "/documented/rooms/{id}" in after["paths"]
            finally:
                worker.close()


def test_document_routes_are_get_only_and_unknown_ones_404() -> None:
    with engine_with(DEMO) as (_, admin):
        assert admin_get(admin, "/openapi.json", "POST")[0] == 405
        assert admin_get(admin, "/api/openapi.json", "POST")[0] == 405
        assert admin_get(admin, "/asyncapi/nobody.json")[0] == 404
        assert admin_get(admin, "/asyncapi/demo")[0] == 404


# ----------------------------------------------------- the SDK and the registration
def test_an_undocumented_registration_carries_no_docs_field() -> None:
    """An engine of an earlier release refuses a field it does not know (BAD_FIELD):
    a service without documentation must not send one."""
    service = Service("plain", websocket=WebSocketOptions(path="/ws/plain"))

    @service.ws.on("x")
    async def x(ctx: WsContext) -> None:
        return None

    hello = codec.encode(m.Hello(versions=[2], service=service.registration()))
    assert b"docs" not in hello


def test_the_sdk_checks_documentation_when_it_is_given() -> None:
    service = Service("bad", websocket=WebSocketOptions(path="/ws/bad"))
    with pytest.raises(TypeError, match="JSON schema"):
        service.ws.on("x", schema="not a schema")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="summary must be a string"):
        service.action("y", summary=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="encode to JSON"):
        service.action("z", request={"default": object()})
    with pytest.raises(ValueError, match="engine's own"):
        service.ws.emits("linkd.mine")


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return short_socket_path(tmp_path)


@pytest.mark.asyncio
async def test_oversized_or_malformed_docs_are_rejected(ipc_path: str) -> None:
    huge = orjson.dumps({"description": "x" * 300_000})
    big = m.Registration("big", http=[m.HttpRoute("a", "GET", "/big/a", docs=huge)])
    bad = m.Registration("bad", ws=m.WsRoute("/ws/bad", catch_all=True, docs=b"[1, 2]"))
    async with running_engine(ipc_path=ipc_path) as engine:
        for registration, code in ((big, "DOCS_TOO_LARGE"), (bad, "BAD_DOCS")):
            async with FakeWorker(ipc_path, registration) as worker:
                await worker.connect()
                answer = await worker.hello()
                assert isinstance(answer, m.Reject), answer
                assert answer.code == code
                await worker.wait_closed(2.0)
            assert registration.name not in engine.state.registry.services


@pytest.mark.asyncio
async def test_workers_that_differ_only_in_docs_serve_together(ipc_path: str) -> None:
    """Documentation is not part of the routes: a rolling deploy may reword it."""

    def chat(summary: str) -> m.Registration:
        docs = orjson.dumps({"summary": summary})
        route = m.HttpRoute("get", "GET", "/chat/get", docs=docs)
        return m.Registration("chat", http=[route], ws=m.WsRoute("/ws/chat", docs=docs))

    async with (
        running_engine(ipc_path=ipc_path) as engine,
        FakeWorker(ipc_path, chat("old words")) as first,
        FakeWorker(ipc_path, chat("new words")) as second,
    ):
        await first.start()
        await second.start()
        entry = engine.state.registry.services["chat"]
        assert len(entry.workers) == 2
        # The newest registration's documentation is the one served.
        assert entry.registration.http[0].docs == orjson.dumps({"summary": "new words"})
