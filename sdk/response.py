"""Response: what an HTTP action returns for a status, headers or a raw body."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["Response"]


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


#: "No JSON given": distinct from ``json=None``, which sends ``null``.
UNSET: Final = _Unset()


class Response:
    """An HTTP answer with more control than returning a JSON-able value.

    ``Response(status=201, json={...})`` sends JSON; ``Response(body=b"...",
    headers=[("content-type", "text/html")])`` sends raw bytes (a ``str`` body is
    UTF-8 encoded); neither sends an empty body (``Response(status=204)``).

    Args:
        status: the HTTP status.
        json: a JSON-able value, encoded with orjson.
        body: raw bytes; mutually exclusive with ``json``.
        headers: extra response headers, pairs or a mapping.
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
        if not 100 <= status <= 999:
            raise ValueError(f"bad HTTP status {status}")
        self.status = status
        self.json = json
        self.body = body.encode() if isinstance(body, str) else body
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        self.headers = [(str(k), str(v)) for k, v in pairs]

    def __repr__(self) -> str:
        return f"Response(status={self.status}, json={self.json!r}, body={self.body!r})"
