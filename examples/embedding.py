"""Embed a Linkd engine in your own asyncio program.

Run it:  python examples/embedding.py      (then: curl localhost:8080/time,
                                            python -m websockets ws://localhost:8080/ticker)

It mounts one HTTP route, one WebSocket endpoint that keeps a set of subscribers,
and a background task of *your* program that broadcasts to them once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from engine import Config, Engine, Request, Response, WebSocket, WebSocketEndpoint


class Ticker(WebSocketEndpoint):
    """Clients that connect get a tick every second; "ping" gets a "pong"."""

    def __init__(self) -> None:
        self.subscribers: set[WebSocket] = set()

    def on_connect(self, ws: WebSocket) -> None:
        self.subscribers.add(ws)

    async def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        # An async handler: messages of one connection are handled one after another.
        if data == "ping":
            ws.send("pong")

    def on_disconnect(self, ws: WebSocket, code: int) -> None:
        self.subscribers.discard(ws)


async def current_time(request: Request) -> Response:
    return Response.json({"time": time.time(), "from": request.remote})


def build_engine(config: Config | None = None) -> tuple[Engine, Ticker]:
    engine = Engine(config or Config(host="127.0.0.1", port=8080))
    engine.route("GET", "/time", current_time)
    ticker = Ticker()
    engine.websocket("/ticker", ticker)
    return engine, ticker


async def tick(engine: Engine, ticker: Ticker, interval: float = 1.0) -> None:
    """Your program's own work: one broadcast per interval, encoded once for everyone."""
    n = 0
    while True:
        await asyncio.sleep(interval)
        n += 1
        engine.broadcast(f'{{"type":"tick","data":{n}}}', ticker.subscribers)


async def main() -> None:
    engine, ticker = build_engine()
    await engine.start()
    ticking = asyncio.create_task(tick(engine, ticker))
    try:
        await asyncio.Event().wait()  # your program runs here
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
        await engine.stop()  # 1001 to WebSocket clients, finish HTTP responses


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
