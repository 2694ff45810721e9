"""Response: what an HTTP action returns for a status, headers or a raw body."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["Response"]


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


#: "No JSON given": distinct from ``json=None``, which sends ``null``.
UNSET: Final = _Unset()

# RFC 9110 §5.1 (a field name is a token) and §5.5 (a field value: visible Latin-1,
# spaces and tabs inside; no CR, LF, NUL or other control). What the engine's HTTP
# parser (h11) refuses to send; the engine answers 502 for it, so refuse it here,
# where the handler's author sees the traceback.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


class Response:
    """An HTTP answer with more control than returning a JSON-able value.

    ``Response(status=201, json={...})`` sends JSON; ``Response(body=b"...",
    headers=[("content-type", "text/html")])`` sends raw bytes (a ``str`` body is
    UTF-8 encoded); neither sends an empty body (``Response(status=204)``).

    Args:
        status: the HTTP status, 200 to 999 (a 1xx is an interim response: the
            engine sends ``100 Continue`` and ``101`` itself).
        json: a JSON-able value, encoded with orjson.
        body: raw bytes; mutually exclusive with ``json``.
        headers: extra response headers, pairs or a mapping. Names are tokens;
            values may not hold CR, LF, NUL or another control character, nor
            characters outside Latin-1 (spaces and tabs around a value are dropped).

    Raises:
        ValueError: naming the status or the header that HTTP cannot carry.
    """

    __slots__ = ("body", "headers", "json", "status")

    def __init__(
        self,
        status: int = 200,
        *,
        json: Any = UNSET,
        body: bytes | str | None = None,
        headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    ) -> None:
        if json is not UNSET and body is not None:
            raise ValueError("Response takes json or body, not both")
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 999:
            raise ValueError(
                f"bad HTTP status {status!r}: a response status is 200 to 999 "
                "(1xx are interim responses the engine sends itself)"
            )
        self.status = status
        self.json = json
        self.body = body.encode() if isinstance(body, str) else body
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        self.headers = [_header(k, v) for k, v in pairs]

    def __repr__(self) -> str:
        return f"Response(status={self.status}, json={self.json!r}, body={self.body!r})"


def _header(key: object, raw: object) -> tuple[str, str]:
    name, value = str(key), str(raw).strip(" \t")
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"bad header name {name[:60]!r}: letters, digits and !#$%&'*+-.^_`|~ only")
    if not _FIELD_VALUE.fullmatch(value):
        # The value is not repeated: it may be a cookie or a token.
        raise ValueError(
            f"header {name!r}: its value holds a character HTTP cannot carry "
            "(CR, LF, NUL or another control character, or one outside Latin-1)"
        )
    return name, value
