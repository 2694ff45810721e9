"""Turn one engine request into a handler call and its reply (errors mapped in one place)."""

from __future__ import annotations

from typing import Any

import orjson

from protocol.codes import ErrorCode
from protocol.ipc import messages as m

from .context import (
    EventContext,
    HttpContext,
    Link,
    PresenceContext,
    Socket,
    WsContext,
    WsMessage,
)
from .encoding import EncodeError, dumps
from .errors import BadRequestError, InternalError, LinkdError, NotFoundError, UnauthorizedError
from .response import UNSET, Response
from .service import Service

__all__ = [
    "handle_connect",
    "handle_disconnect",
    "handle_event",
    "handle_http",
    "handle_message",
]

_INTERNAL = InternalError().to_info()


class _Unsendable(Exception):
    """A handler's value cannot go on the wire; the message is the log line."""


def _error(service: Service, request_id: int, exc: BaseException, what: str) -> m.Reply:
    """The one place where exceptions become error replies."""
    if isinstance(exc, _Unsendable):
        # The line says what and where; a traceback would only show the SDK.
        service.logger.error("%s", exc)
        return m.Reply(id=request_id, error=_INTERNAL)
    if isinstance(exc, LinkdError):
        if exc.code is ErrorCode.INTERNAL:
            # The engine hides the message from clients; the log keeps it.
            service.logger.error("%s failed: %s", what, exc.message, exc_info=exc)
        try:
            info = exc.to_info()
        except orjson.JSONEncodeError:
            service.logger.error(
                "%s raised %s whose details JSON cannot encode: %r",
                what,
                type(exc).__name__,
                exc.details,
            )
            return m.Reply(id=request_id, error=_INTERNAL)
        return m.Reply(id=request_id, error=info)
    # Never leak the details of an unexpected exception: they may be sensitive.
    service.logger.error("%s raised", what, exc_info=exc)
    return m.Reply(id=request_id, error=_INTERNAL)


def _encode(what: str, value: Any) -> bytes:
    try:
        return dumps(value)
    except EncodeError as exc:
        raise _Unsendable(f"{what} returned a value JSON cannot encode: {exc}") from None


def _http_response(request_id: int, response: Response, what: str) -> m.Reply:
    if response.json is not UNSET:
        return m.Reply(
            id=request_id,
            status=response.status,
            headers=response.headers,
            json=_encode(what, response.json),
        )
    body = response.body
    if body is None:
        body = b""
    elif isinstance(body, bytearray | memoryview):
        body = bytes(body)
    elif not isinstance(body, bytes):
        # Response takes bytes or str; anything else would break the IPC frame.
        raise _Unsendable(
            f"{what} returned a Response whose body is {type(body).__qualname__}, "
            "not bytes or str (use json= for a value)"
        )
    return m.Reply(id=request_id, status=response.status, headers=response.headers, body=body)


async def handle_http(service: Service, link: Link, req: m.HttpRequest) -> m.Reply:
    """Run the middleware and the action ``req.action``; its value becomes JSON, a
    Response is sent as is."""
    what = f"action {req.action!r}"
    try:
        action = service.actions.get(req.action)
        if action is None:
            raise NotFoundError(f"no action {req.action!r}")
        if action.auth == "required" and req.auth is None:
            # The engine checks first; this guards a misconfigured engine.
            raise UnauthorizedError()
        value = await service.run_action(action, HttpContext(service, link, req))
        if isinstance(value, Response):
            return _http_response(req.id, value, what)
        return m.Reply(id=req.id, json=_encode(what, value))
    except Exception as exc:
        return _error(service, req.id, exc, what)


async def handle_message(service: Service, link: Link, msg: m.Message) -> m.Reply:
    """Run the middleware chain and the handler of ``msg.type``; the result is the ack."""
    what = f"handler of {msg.type!r}"
    if msg.binary is not None:
        return await _handle_binary(service, link, msg)
    try:
        try:
            frame = orjson.loads(msg.json)
        except orjson.JSONDecodeError:
            raise BadRequestError("the message is not JSON") from None
        if not isinstance(frame, dict):
            raise BadRequestError("the message is not a JSON object")
        client_id = frame.get("id")
        ctx = WsContext(
            service,
            link,
            msg.auth,
            Socket(id=str(msg.conn), conn=msg.conn, remote_address=msg.remote),
            WsMessage(type=msg.type, data=frame.get("data"), id=client_id),
        )
        value = await service.ws.dispatch(ctx)
        if isinstance(value, Response):
            raise _Unsendable(
                f"{what} returned a Response: that is for HTTP actions; return the ack's data"
            )
        if client_id is None:
            # No ack goes to the client (docs/ipc.md §4.2): do not ship the value.
            return m.Reply(id=msg.id)
        return m.Reply(id=msg.id, json=_encode(what, value))
    except Exception as exc:
        return _error(service, msg.id, exc, what)


async def _handle_binary(service: Service, link: Link, msg: m.Message) -> m.Reply:
    """A binary frame: ``ctx.message`` is its bytes; no ack (it has no id), so the
    handler's value is dropped, and an error reaches the client as an event."""
    assert msg.binary is not None
    try:
        ctx = WsContext(
            service,
            link,
            msg.auth,
            Socket(id=str(msg.conn), conn=msg.conn, remote_address=msg.remote),
            WsMessage(type=m.BINARY_TYPE, data=msg.binary),
        )
        await service.ws.dispatch(ctx)
        return m.Reply(id=msg.id)
    except Exception as exc:
        return _error(service, msg.id, exc, "binary handler")


async def handle_connect(service: Service, link: Link, req: m.Connect) -> m.Reply:
    """Run on_connect; an error reply makes the engine refuse the connection."""
    try:
        handler = service.ws.connect_handler
        if handler is not None:
            ctx = WsContext(
                service,
                link,
                req.auth,
                Socket(id=str(req.conn), conn=req.conn, remote_address=req.remote),
                path=req.path,
                query_string=req.query,
                headers=req.headers,
            )
            await handler(ctx)
        return m.Reply(id=req.id)
    except Exception as exc:
        return _error(service, req.id, exc, "on_connect")


async def handle_disconnect(service: Service, link: Link, note: m.Disconnect) -> None:
    """Run on_disconnect(ctx, code, rooms); errors are only logged (nothing to answer)."""
    handler = service.ws.disconnect_handler
    if handler is None:
        return
    ctx = WsContext(service, link, note.auth, Socket(id=str(note.conn), conn=note.conn))
    try:
        await handler(ctx, note.code, list(note.rooms))
    except Exception:
        service.logger.exception("on_disconnect raised")


async def handle_presence(service: Service, link: Link, note: m.Presence) -> None:
    """Run on_presence(ctx); errors are only logged (nothing to answer)."""
    handler = service.ws.presence_handler
    if handler is None:
        return
    try:
        await handler(PresenceContext(service, link, note))
    except Exception:
        service.logger.exception("on_presence raised")


async def handle_event(service: Service, link: Link, note: m.Event) -> m.Reply:
    """Run the ``on_event`` handler of ``note.name``; the reply is the ack.

    Any reply acks the event, an error one too: a handler that raises has its error
    logged here and the event is not delivered again (a bug would fail every retry);
    only a worker that dies or overruns the request timeout gets it redelivered.
    """
    what = f"event handler of {note.name!r}"
    handler = service.event_handlers.get(note.name)
    if handler is None:
        service.logger.warning("event %r has no handler here: acked and dropped", note.name)
        return m.Reply(id=note.id)
    try:
        try:
            data = orjson.loads(note.json)
        except orjson.JSONDecodeError:
            raise BadRequestError("the event data is not JSON") from None
        await handler(EventContext(service, link, note, data))
        return m.Reply(id=note.id)
    except Exception as exc:
        return _error(service, note.id, exc, what)
