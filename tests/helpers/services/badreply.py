"""The ``badreply`` service: HTTP actions whose responses HTTP cannot carry.

``sdk.Response`` refuses them at construction, so these build a valid one and spoil
it afterwards, the way a worker not written with the SDK could send them; the engine
must answer 502, never leave the client waiting.

- ``GET /badreply/crlf``: a header value with CR/LF (response splitting);
- ``GET /badreply/informational``: status 103;
- ``GET /badreply/refused``: the SDK's own refusal (a ValueError in the handler → 500);
- ``GET /badreply/ok``: a normal answer, to show the worker keeps serving.
"""

from __future__ import annotations

from typing import Any

from sdk import HttpContext, Response, Service

service = Service("badreply")


@service.action("crlf", route="/badreply/crlf", method="GET")
async def crlf(ctx: HttpContext) -> Response:
    response = Response(200, json={"ok": True})
    response.headers.append(("x-injected", "a\r\nSet-Cookie: session=stolen"))
    return response


@service.action("informational", route="/badreply/informational", method="GET")
async def informational(ctx: HttpContext) -> Response:
    response = Response(200, body=b"")
    response.status = 103
    return response


@service.action("refused", route="/badreply/refused", method="GET")
async def refused(ctx: HttpContext) -> Response:
    return Response(200, headers=[("x-bad", "a\nb")])  # raises ValueError


@service.action("ok", route="/badreply/ok", method="GET")
async def ok(ctx: HttpContext) -> Any:
    return {"ok": True}
