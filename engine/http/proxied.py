"""Proxied: the client's address when a balancer or a reverse proxy is in front.

Two ways, each off by default (docs/deployment.md, "Behind HAProxy / nginx / a cloud
balancer"):

- ``--proxy-protocol``: the connection starts with a PROXY header (protocol/http/
  proxy.py), read before any HTTP byte; its source is the client. A connection
  without a valid header within ``--header-timeout`` is not from the balancer: it is
  closed unanswered (an answer would tell a scanner what listens), counted
  (``linkd_ws_refused_connections{reason="proxy_header"}``) and logged at most once
  a second.
- ``--trusted-proxies``: per request, ``X-Forwarded-For`` (or ``Forwarded``) is
  believed only when the connection's peer is a trusted proxy (protocol/http/
  forwarded.py). Per request, not per connection: a proxy's keep-alive connection
  carries requests of many clients.

The address chosen becomes ``remote`` (access log, refusal logs, handlers'
``Request.remote``, the WebSocket's ``remote`` and so the IPC ``remote`` a worker sees
as ``ctx.socket.remote_address``) and ``_address`` (the per-address limits).
"""

from __future__ import annotations

import logging
import weakref
from functools import lru_cache
from typing import TYPE_CHECKING

from engine.config import Config
from engine.http.base import HttpBase
from engine.limits.ratelimit import LogBudget, address_key
from protocol.http import NEED_DATA, HttpRequest
from protocol.http.forwarded import TrustedProxies, parse_networks
from protocol.http.proxy import ProxyHeaderError, parse_proxy_header

if TYPE_CHECKING:
    from engine.node import Node

__all__ = ["Proxied", "trusted_proxies"]

log = logging.getLogger("linkd.http")


#: At most one line a second about connections without a PROXY header (a port scanned
#: from the internet must not become a log flood); one budget per engine (an
#: ``Engine`` is one ``Node``), gone with it.
_REFUSED: weakref.WeakKeyDictionary[Node, LogBudget] = weakref.WeakKeyDictionary()


@lru_cache(maxsize=8)
def _trusted(networks: tuple[str, ...], header: str) -> TrustedProxies | None:
    return TrustedProxies(parse_networks(networks), header) if networks else None


def trusted_proxies(config: Config) -> TrustedProxies | None:
    """The config's trusted proxies, parsed once (None: none)."""
    return _trusted(config.trusted_proxies, config.forwarded_header)


class Proxied(HttpBase):
    __slots__ = ()

    def _set_peer(self, peer: tuple[str, int]) -> None:
        self._peer = self.remote = peer
        self._address = address_key(peer[0])

    def _proxy_data(self, data: bytes) -> bytes | None:
        """Feed the PROXY header; what follows it once it is complete, else None
        (more is needed, or the connection was refused)."""
        buffer = self._proxy_buffer
        assert buffer is not None
        buffer += data
        try:
            header = parse_proxy_header(buffer)
        except ProxyHeaderError as exc:
            self._proxy_refused(str(exc))
            return None
        if header is NEED_DATA:
            return None
        self._proxy_buffer = None
        if header.source is not None:
            self._set_peer(header.source)
        # LOCAL (the balancer's health check), UNKNOWN, AF_UNIX: the socket's address.
        return bytes(buffer[header.consumed :])

    def _proxy_refused(self, reason: str) -> None:
        """Not from the balancer: close without a byte of answer."""
        transport = self._transport
        if transport is None:
            return
        state = self._state
        state.metrics.count_refused("proxy_header")
        budget = _REFUSED.get(state)
        if budget is None:
            budget = _REFUSED[state] = LogBudget(1.0, 1.0)
        budget.warning(
            log,
            state.loop.time(),
            "closed a connection from %s: %s (--proxy-protocol is on: only the balancer "
            "may connect)",
            self._peer[0] if self._peer else "-",
            reason,
        )
        self._proxy_buffer = None
        transport.abort()

    def _forwarded(self, request: HttpRequest) -> None:
        """``remote`` for this request: the client a trusted proxy forwarded for."""
        trusted = trusted_proxies(self._state.config)
        peer = self._peer
        if trusted is None or peer is None:
            return
        client = trusted.client(peer, request.header_list(trusted.header))
        if client != self.remote:
            self.remote = client
            self._address = address_key(client[0])
