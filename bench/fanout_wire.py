"""The fan-out benchmark's client protocol: the bytes every server under test must speak.

One protocol for linkd and its peers, so one load generator drives all of them:

- a subscriber sends ``{"type":"bench.sub","data":{"room":R},"id":1}`` and gets the ack
  ``{"id":1,"type":"bench.sub","data":true}``;
- a publisher sends ``{"type":"bench.pub","data":{"room":R,"payload":P},"id":N}`` and gets
  ``{"id":N,"type":"bench.pub","data":true}``;
- every member of R receives ``{"type":"bench.msg","data":P}``: linkd's SDK builds it with
  ``orjson.dumps({"type": "bench.msg", "data": payload})``, the peers paste the re-encoded
  payload between the same two constants (``peer_reply``), so the bytes are identical.

The payload P is ~100 bytes of JSON with a fixed layout: the send time
(``time.monotonic_ns()``, one clock for every process on Linux) and a sequence number
are zero-padded decimal strings at fixed offsets, so a subscriber reads them by slicing
the frame (``TS_SLICE``, ``SEQ_SLICE``) instead of parsing JSON.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson

__all__ = [
    "DEFLATE_OFFER",
    "MSG_PREFIX",
    "MSG_SIZE",
    "PAYLOAD_SIZE",
    "SEQ_SLICE",
    "TAIL",
    "TEXT",
    "TS_SLICE",
    "WS_PATH",
    "ack",
    "handshake",
    "msg",
    "negotiated_extensions",
    "payload",
    "peer_reply",
    "pub",
    "sub",
]

WS_PATH = "/ws/bench"
#: What the deflate scenario's clients offer (RFC 7692 §7.1).
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
#: Appended to a compressed message before inflating it (RFC 7692 §7.2.2).
TAIL = b"\x00\x00\xff\xff"
#: Filler text: compressible like a chat line.
TEXT = b"the quick brown fox jumps over the lazy dog!!"

_PAYLOAD = b'{"ts":"%019d","seq":"%010d","text":"' + TEXT + b'"}'
_MSG_HEAD = b'{"type":"bench.msg","data":'
#: Every ``bench.msg`` frame starts with these bytes; the timestamp follows.
MSG_PREFIX = _MSG_HEAD + b'{"ts":"'
TS_SLICE = slice(len(MSG_PREFIX), len(MSG_PREFIX) + 19)
SEQ_SLICE = slice(TS_SLICE.stop + len(b'","seq":"'), TS_SLICE.stop + len(b'","seq":"') + 10)


def payload(ts_ns: int, seq: int) -> bytes:
    """The published JSON object (fixed size)."""
    return _PAYLOAD % (ts_ns, seq)


PAYLOAD_SIZE = len(payload(0, 0))


def msg(payload_json: bytes) -> bytes:
    """What a subscriber receives for ``payload_json``."""
    return _MSG_HEAD + payload_json + b"}"


MSG_SIZE = len(msg(payload(0, 0)))


def sub(room: str, msg_id: int = 1) -> bytes:
    return b'{"type":"bench.sub","data":{"room":' + orjson.dumps(room) + b'},"id":%d}' % msg_id


def pub(room_json: bytes, payload_json: bytes, msg_id: int) -> bytes:
    """A publish; ``room_json`` is ``orjson.dumps(room)``, computed once by the caller."""
    return (
        b'{"type":"bench.pub","data":{"room":'
        + room_json
        + b',"payload":'
        + payload_json
        + b'},"id":%d}' % msg_id
    )


def ack(msg_id: Any, message_type: str) -> bytes:
    """The ack linkd builds (``engine/services.py``) for a handler that returns True."""
    head = b'{"id":' + orjson.dumps(msg_id) + b',"type":' + orjson.dumps(message_type)
    return head + b',"data":true}'


def peer_reply(raw: bytes | str) -> tuple[str, str, bytes | None, bytes]:
    """What a peer server does with a client message: (kind, room, message, ack).

    ``kind`` is ``"sub"`` or ``"pub"``; ``message`` is the ``bench.msg`` to fan out
    (None for a sub). Raises ValueError on anything else.
    """
    envelope = orjson.loads(raw)
    kind = envelope["type"]
    data = envelope["data"]
    room = data["room"]
    if kind == "bench.pub":
        return "pub", room, msg(orjson.dumps(data["payload"])), ack(envelope["id"], kind)
    if kind == "bench.sub":
        return "sub", room, None, ack(envelope["id"], kind)
    raise ValueError(f"unknown message type {kind!r}")


def handshake(host: str, port: int, deflate: bool) -> bytes:
    """The client's upgrade request, offering permessage-deflate when ``deflate``."""
    key = base64.b64encode(os.urandom(16))
    extension = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n".encode() if deflate else b""
    return (
        b"GET " + WS_PATH.encode() + b" HTTP/1.1\r\n"
        b"Host: " + f"{host}:{port}".encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extension + b"\r\n"
    )


def negotiated_extensions(head: bytes) -> str:
    """The ``Sec-WebSocket-Extensions`` value of a 101 response head ('' when none)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-extensions":
            return value.strip().decode("latin-1")
    return ""
