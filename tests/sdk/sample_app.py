"""A service module for the ``python -m sdk`` tests."""

from __future__ import annotations

from sdk import HttpContext, Service

service = Service("sample", version="0.1.0")


@service.action("hello")
async def hello(ctx: HttpContext) -> str:
    return "hello"
