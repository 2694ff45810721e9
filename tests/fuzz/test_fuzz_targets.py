"""The fuzz targets' invariants under pytest: hypothesis examples, seeds and reproducers.

The same ``check_*`` functions atheris runs (``fuzz/fuzz_*.py``) are driven here by
hypothesis for a bounded number of examples, fed whole and one byte at a time, and
every committed seed is replayed. Files in ``fuzz/crashes-found/`` are bugs the
fuzzers found: their regression tests run the targets with no known bug stepped
around, so they fail until the bug is fixed (then drop its id from ``KNOWN_BUGS``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import fuzz_deflate_negotiation, fuzz_http, fuzz_ipc, fuzz_ws, make_corpus

FUZZ = Path(fuzz_http.__file__).resolve().parent
CORPUS = FUZZ / "corpus"
CRASHES = FUZZ / "crashes-found"

Check = Callable[..., None]
CHECKS: dict[str, Check] = {
    "http": fuzz_http.check_http,
    "ws": fuzz_ws.check_ws,
    "negotiation": fuzz_deflate_negotiation.check_negotiation,
    "ipc": fuzz_ipc.check_ipc,
}
NO_BUGS_TOLERATED: frozenset[str] = frozenset()

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------- HTTP
_KEY = base64.b64encode(b"0123456789abcdef")
HTTP_PIECES = [
    b"GET / HTTP/1.1\r\n",
    b"POST /api?q=1 HTTP/1.1\r\n",
    b"HEAD / HTTP/1.0\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n",
    b"host: a\r\n",
    b"connection: close\r\n",
    b"connection: keep-alive, Upgrade\r\n",
    b"upgrade: websocket\r\n",
    b"sec-websocket-version: 13\r\n",
    b"sec-websocket-key: " + _KEY + b"\r\n",
    b"sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n",
    b"sec-websocket-extensions: permessage-deflate; server_max_window_bits=9\r\n",
    b"content-length: 5\r\n",
    b"content-length: 5000\r\n",
    b"transfer-encoding: chunked\r\n",
    b"expect: 100-continue\r\n",
    b"\r\n",
    b"hello",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"\x81\x82abcd\x09\x0b",
    b"x-pad: " + b"p" * 300 + b"\r\n",
]
http_streams = st.lists(
    st.one_of(st.sampled_from(HTTP_PIECES), st.binary(max_size=8)), max_size=24
).map(b"".join)


@SETTINGS
@given(data=http_streams)
def test_http_structured(data: bytes) -> None:
    # check_http feeds every input whole and then one byte at a time, and compares.
    fuzz_http.check_http(data)


@SETTINGS
@given(data=st.binary(max_size=512))
def test_http_arbitrary_bytes(data: bytes) -> None:
    fuzz_http.check_http(data)


# ----------------------------------------------------------------- WebSocket
# Flag bytes of fuzz_ws: bit 0 deflate; bits 1-2 mode (0 whole, 1 chunked,
# 2 structured); bits 3-7 chunk size.
WHOLE, BYTEWISE, STRUCTURED, STRUCTURED_BYTEWISE = 0x00, 0x0A, 0x04, 0x0C


@SETTINGS
@given(
    deflate=st.booleans(),
    mode=st.sampled_from([STRUCTURED, STRUCTURED_BYTEWISE]),
    rest=st.binary(max_size=400),
)
def test_ws_structured_frames(deflate: bool, mode: int, rest: bytes) -> None:
    fuzz_ws.check_ws(bytes([mode | deflate]) + rest)


@SETTINGS
@given(deflate=st.booleans(), mode=st.sampled_from([WHOLE, BYTEWISE]), rest=st.binary(max_size=400))
def test_ws_raw_bytes(deflate: bool, mode: int, rest: bytes) -> None:
    fuzz_ws.check_ws(bytes([mode | deflate]) + rest)


frames = st.lists(
    st.tuples(
        st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3]),
        st.booleans(),  # fin
        st.booleans(),  # compress (sets RSV1 on data frames)
        st.binary(max_size=200),
    ),
    max_size=8,
)


@SETTINGS
@given(deflate=st.booleans(), bytewise=st.booleans(), spec=frames)
def test_ws_masked_client_frames(
    deflate: bool, bytewise: bool, spec: list[tuple[int, bool, bool, bytes]]
) -> None:
    params = fuzz_ws.PARAMS if deflate else None
    compressor = fuzz_ws.new_compressor(params)
    stream = b""
    for opcode, fin, compress, payload in spec:
        body = fuzz_ws.compress_part(compressor, payload, fin=fin) if compress else payload
        rsv1 = compress and opcode in (0x1, 0x2)
        stream += fuzz_ws.encode_client_frame(opcode, body, fin=fin, rsv1=rsv1)
    fuzz_ws.check_ws(bytes([BYTEWISE if bytewise else WHOLE]) + stream)
    fuzz_ws.check_ws(bytes([(BYTEWISE if bytewise else WHOLE) | 1]) + stream)


# ----------------------------------------------------------- negotiation
@SETTINGS
@given(
    flags=st.integers(0, 255),
    params=st.lists(
        st.sampled_from(
            [
                "server_no_context_takeover",
                "client_no_context_takeover",
                "server_max_window_bits=9",
                "server_max_window_bits=15",
                "client_max_window_bits",
                "client_max_window_bits=10",
                'client_max_window_bits="12"',
            ]
        )
        | st.text(st.characters(max_codepoint=255), max_size=12),
        max_size=5,
    ),
)
def test_negotiation(flags: int, params: list[str]) -> None:
    header = "; ".join(["permessage-deflate", *params])
    fuzz_deflate_negotiation.check_negotiation(bytes([flags]) + header.encode("latin-1", "replace"))


# -------------------------------------------------------------------- ipc
@SETTINGS
@given(st.integers(0, 255), st.binary(max_size=300))
def test_ipc_arbitrary_bytes(flags: int, rest: bytes) -> None:
    fuzz_ipc.check_ipc(bytes([flags]) + rest)


@SETTINGS
@given(st.integers(0, 255), st.lists(st.binary(min_size=1, max_size=60), max_size=4))
def test_ipc_framed_garbage(flags: int, bodies: list[bytes]) -> None:
    """Well-framed bodies of arbitrary bytes: exercises the CBOR and schema layers."""
    stream = b"".join(len(b).to_bytes(4, "big") + b for b in bodies)
    fuzz_ipc.check_ipc(bytes([flags]) + stream)


# ------------------------------------------------------------ seeds, corpus
SEEDS = [(folder.name, path) for folder in sorted(CORPUS.iterdir()) for path in _files(folder)]


@pytest.mark.parametrize(("target", "path"), SEEDS, ids=[f"{t}/{p.name}" for t, p in SEEDS])
def test_seed(target: str, path: Path) -> None:
    CHECKS[target](path.read_bytes())


def test_seed_corpus_is_up_to_date() -> None:
    assert make_corpus.main(["--check"]) == 0


def test_every_target_has_seeds() -> None:
    assert {folder for folder, _ in SEEDS} == set(CHECKS)
    assert all(sum(1 for t, _ in SEEDS if t == name) >= 6 for name in CHECKS)


# -------------------------------------------- regressions: found by fuzzing
CRASH_FILES = _files(CRASHES)


def _target_of(path: Path) -> str:
    return path.name.split("-", 1)[0]


@pytest.mark.parametrize("path", CRASH_FILES, ids=[p.name for p in CRASH_FILES])
def test_found_bug_is_stepped_around(path: Path) -> None:
    """With the bug's id in KNOWN_BUGS the harness passes, so long runs go on."""
    CHECKS[_target_of(path)](path.read_bytes())


@pytest.mark.timeout(5)
@pytest.mark.parametrize("path", CRASH_FILES, ids=[p.name for p in CRASH_FILES])
def test_found_bug_regression(path: Path) -> None:
    """Fails until the bug named by the file is fixed in protocol/ (see fuzz/README.md)."""
    CHECKS[_target_of(path)](path.read_bytes(), NO_BUGS_TOLERATED)
