"""Regenerate the seed corpora under ``fuzz/corpus/`` (deterministic: same bytes every run).

Usage, from the repository root::

    .venv/bin/python fuzz/make_corpus.py          # rewrite fuzz/corpus/{http,ws,negotiation,ipc}
    .venv/bin/python fuzz/make_corpus.py --check  # exit 1 if a committed seed differs

Seeds are named after what they exercise; stale files in the three folders are removed.
"""

from __future__ import annotations

import argparse
import base64
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the ``fuzz`` package importable
    sys.path.insert(0, str(ROOT))

from fuzz.fuzz_ws import encode_client_frame  # noqa: E402

CORPUS = ROOT / "fuzz" / "corpus"
KEY = base64.b64encode(b"0123456789abcdef").decode()

# ws flag byte (see fuzz_ws): bit 0 deflate, bits 1-2 mode, bits 3-7 chunk size.
RAW, RAW_DEFLATE = 0x00, 0x01
STRUCT, STRUCT_DEFLATE = 0x04, 0x05


def chunked(size: int, *, deflate: bool = False) -> int:
    return (size << 3) | 0x02 | int(deflate)


def _upgrade(extensions: str | None, version: str = "13") -> bytes:
    lines = [
        "GET /echo HTTP/1.1",
        "host: linkd.test",
        "upgrade: websocket",
        "connection: Upgrade",
        f"sec-websocket-version: {version}",
        f"sec-websocket-key: {KEY}",
    ]
    if extensions is not None:
        lines.append(f"sec-websocket-extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def http_seeds() -> dict[str, bytes]:
    get = b"GET /health HTTP/1.1\r\nhost: linkd.test\r\n\r\n"
    return {
        "get_keepalive": b"GET /health HTTP/1.1\r\nhost: a\r\nconnection: keep-alive\r\n\r\n",
        "pipelined_pair": get
        + b"GET /metrics?x=1 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        "chunked_post": b"POST /api HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\ntrailer: x\r\n\r\n" + get,
        "content_length_post": b"POST /api HTTP/1.1\r\nhost: a\r\ncontent-length: 11\r\n\r\n"
        b"hello world" + get,
        "expect_continue": b"PUT /api HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n"
        b"content-length: 4\r\n\r\nbody",
        "head_http10": b"HEAD / HTTP/1.0\r\n\r\n",
        "upgrade_deflate": _upgrade("permessage-deflate; client_max_window_bits")
        + encode_client_frame(0x1, b"hello"),
        "upgrade_deflate_params": _upgrade(
            "x-webkit-deflate-frame, permessage-deflate; server_no_context_takeover; "
            "client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9"
        ),
        "upgrade_bad_version": _upgrade(None, version="8"),
        "oversize_header": b"GET / HTTP/1.1\r\nhost: a\r\nx-big: " + b"a" * 1100 + b"\r\n\r\n",
        "body_too_big": b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5000\r\n\r\n" + b"x" * 64,
        "chunked_too_big": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        b"1000\r\n" + b"y" * 4096 + b"\r\n10\r\n" + b"z" * 16 + b"\r\n0\r\n\r\n",
        "bad_request_line": b"GET  /\x00 HTTP/1.1\r\n\r\n",
        "truncated_at_eof": b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc",
    }


def _spec(
    kind: int,
    payload: bytes,
    *,
    fin: bool = True,
    compress: bool = False,
    flip_rsv1: bool = False,
    unmasked: bool = False,
    opcode: int | None = None,
) -> bytes:
    """One frame in the structured-mode layout read by ``fuzz_ws.structured_stream``."""
    ctl = kind | (0 if fin else 0x08) | (0x10 if compress else 0) | (0x20 if flip_rsv1 else 0)
    ctl |= 0x40 if unmasked else 0
    out = bytes([ctl])
    if opcode is not None:
        out += bytes([opcode])
    if not unmasked:
        out += b"\x5a\x01\xc3\x7e"
    return out + bytes([len(payload)]) + payload


def _deflate(payload: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


def ws_seeds() -> dict[str, bytes]:
    text = encode_client_frame(0x1, b"hello, linkd")
    utf8 = "héllo wörld ✓".encode()
    close = encode_client_frame(0x8, b"\x03\xe8bye")
    return {
        "text_masked": bytes([RAW]) + text + close,
        "binary_masked": bytes([RAW]) + encode_client_frame(0x2, bytes(range(256))),
        "fragmented_with_ping": bytes([RAW])
        + encode_client_frame(0x1, utf8[:2], fin=False)
        + encode_client_frame(0x9, b"ping!")
        + encode_client_frame(0x0, utf8[2:])
        + encode_client_frame(0xA, b"pong"),
        "compressed_text": bytes([RAW_DEFLATE])
        + encode_client_frame(0x1, _deflate(b"compress me " * 20), rsv1=True)
        + close,
        "compressed_fragmented": bytes([RAW_DEFLATE])
        + encode_client_frame(0x2, _deflate(b"abc" * 100)[:5], fin=False, rsv1=True)
        + encode_client_frame(0x0, _deflate(b"abc" * 100)[5:]),
        "compression_bomb": bytes([RAW_DEFLATE])
        + encode_client_frame(0x2, _deflate(b"\0" * 200_000), rsv1=True),
        "close_normal": bytes([RAW]) + close,
        "close_reserved_code": bytes([RAW]) + encode_client_frame(0x8, b"\x03\xed"),
        "invalid_utf8": bytes([RAW]) + encode_client_frame(0x1, b"ok \xc3\x28 bad"),
        "unmasked_frame": bytes([RAW]) + encode_client_frame(0x1, b"hi", key=None),
        "rsv1_without_deflate": bytes([RAW]) + encode_client_frame(0x1, b"hi", rsv1=True),
        "too_big_header": bytes([RAW]) + b"\x82\xff" + (70_000).to_bytes(8, "big") + b"abcd",
        "chunked_3_bytes": bytes([chunked(3, deflate=True)])
        + text
        + encode_client_frame(0x9, b"")
        + encode_client_frame(0x1, _deflate(utf8), rsv1=True),
        "structured_fragments": bytes([STRUCT])
        + _spec(0, b"frag-", fin=False)
        + _spec(3, b"p")
        + _spec(2, b"ment")
        + _spec(5, b"\x05"),
        "structured_deflate": bytes([STRUCT_DEFLATE])
        + _spec(6, "naïve ".encode("latin-1") * 4, compress=True)
        + _spec(1, b"\x00\x01\x02", compress=True, fin=False)
        + _spec(2, b"\x03\x04", compress=True)
        + _spec(7, b"", opcode=0x3),
    }


def negotiation_seeds() -> dict[str, bytes]:
    offers = {
        "plain": "permessage-deflate",
        "client_bits": "permessage-deflate; client_max_window_bits",
        "all_params": "permessage-deflate; server_no_context_takeover; "
        "client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12",
        "fallback": "permessage-deflate; server_max_window_bits=8, permessage-deflate",
        "quoted_bits": 'permessage-deflate; client_max_window_bits="10"',
        "bad_params": "permessage-deflate; foo, permessage-deflate; client_max_window_bits=08",
    }
    return {name: b"\x00" + value.encode("latin-1") for name, value in offers.items()}


def ipc_seeds() -> dict[str, bytes]:
    import cbor2

    from protocol.ipc import encode, encode_frame
    from protocol.ipc import messages as m

    def frames(*msgs: object) -> bytes:
        return b"".join(encode_frame(encode(msg)) for msg in msgs)

    reg = m.Registration(
        "chat",
        http=[m.HttpRoute("get-room", "GET", "/chat/rooms/:id", "required")],
        ws=m.WsRoute("/ws/chat", types=["ping"], prefixes=["chat."], on_connect=True),
    )
    hello = m.Hello(versions=[m.PROTOCOL_VERSION], service=reg, pid=42, max_frame=2048)
    engine, worker, engine_bytewise = 0x00, 0x01, 0x02
    return {
        "engine_hello": bytes([engine]) + frames(hello),
        "engine_hello_bytewise": bytes([engine_bytewise]) + frames(hello),
        "engine_commands_before_hello": bytes([engine])
        + frames(m.Join(1, "r"), m.Emit(b'{"type":"x"}', room="r")),
        "engine_oversize": bytes([engine]) + b"\x00\x01\x00\x00" + b"x" * 16,
        "engine_not_cbor": bytes([engine]) + b"\x00\x00\x00\x02\xff\xff",
        "engine_tag": bytes([engine]) + encode_frame(b"\xc1\x01"),
        "engine_unknown_type": bytes([engine]) + encode_frame(cbor2.dumps({"t": "nope"})),
        "worker_welcome_requests": bytes([worker])
        + frames(
            m.Welcome(1, 1, 2048, 5.0),
            m.Message(id=1, conn=3, type="chat.send", json=b'{"type":"chat.send"}'),
            m.HttpRequest(id=2, action="get-room", method="GET", path="/chat/rooms/1"),
            m.Disconnect(conn=3, code=1000, rooms=["r"]),
            m.Ping(1),
        ),
        "worker_reject": bytes([worker]) + frames(m.Reject("VERSION", "no")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    stale = False
    for folder, seeds in (
        ("http", http_seeds()),
        ("ws", ws_seeds()),
        ("negotiation", negotiation_seeds()),
        ("ipc", ipc_seeds()),
    ):
        target = CORPUS / folder
        target.mkdir(parents=True, exist_ok=True)
        existing = {p.name for p in target.iterdir() if p.is_file()}
        for name, data in seeds.items():
            path = target / name
            if not path.exists() or path.read_bytes() != data:
                stale = True
                if not args.check:
                    path.write_bytes(data)
        for extra in existing - set(seeds):
            stale = True
            if not args.check:
                (target / extra).unlink()
    if args.check and stale:
        print("fuzz/corpus is stale: run .venv/bin/python fuzz/make_corpus.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
