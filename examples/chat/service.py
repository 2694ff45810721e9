"""The chat service: wires the database, the handlers and the page into one Service.

``engine --service examples.chat.service`` starts it under the engine; ``python -m sdk
examples.chat.service --ipc PATH`` runs one more worker by hand.
"""

from __future__ import annotations

import logging

from examples.chat import handlers, http, pages
from examples.chat.config import Settings
from examples.chat.db import connect_pool, ping
from examples.chat.store import ChatStore
from sdk import Service, WebSocketOptions

__all__ = ["service", "settings"]

log = logging.getLogger("linkd.service.chat")

settings = Settings.from_env()

service = Service(
    "chat",
    version="1.0.0",
    websocket=WebSocketOptions(path="/ws/chat", auth="required"),
)


@service.before_start
async def announce_demo_mode(svc: Service) -> None:
    if settings.demo:
        log.warning(
            "DEMO MODE IS ON (CHAT_DEMO): POST /chat/demo/token makes any client on this "
            "machine any demo user; never enable it where real users connect"
        )


@service.before_start
async def open_database(svc: Service) -> None:
    svc.db = ChatStore(await connect_pool(settings))


@service.after_stop
async def close_database(svc: Service) -> None:
    if isinstance(svc.db, ChatStore):
        await svc.db.pool.close()


@service.readiness
async def database_answers() -> bool:
    return isinstance(service.db, ChatStore) and await ping(service.db.pool)


handlers.register(service)
http.register(service)
pages.register(service, settings)
