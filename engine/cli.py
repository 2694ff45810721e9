"""``engine``: the command line. Every flag also reads ``LINKD_<FLAG>`` from the environment.

engine --listen :3000 --ipc /tmp/linkd.sock --echo /echo
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from engine.auth import Authenticator
from engine.config import Config, parse_listen
from engine.limits.ratelimit import parse_type_limit
from engine.limits.slow import parse_rule
from engine.log import LEVELS, configure_logging
from engine.server import Engine
from protocol import Limits
from protocol.ws import DeflateOptions

__all__ = ["build_parser", "config_from_args", "main"]


def _env_name(flag: str) -> str:
    return "LINKD_" + flag.lstrip("-").upper().replace("-", "_")


class _Parser(argparse.ArgumentParser):
    """Adds ``LINKD_*`` defaults and shows both default and variable in ``--help``."""

    def add(self, flag: str, *, help: str, env: tuple[str, ...] = (), **kwargs: Any) -> None:
        names = (_env_name(flag), *env)
        default = kwargs.pop("default", None)
        for name in names:
            if name in os.environ:
                raw = os.environ[name]
                if kwargs.get("action") == "append":
                    default = [v for v in raw.split(",") if v]
                elif kwargs.get("action") == "store_true":
                    default = raw.lower() in ("1", "true", "yes", "on")
                else:
                    try:
                        default = kwargs.get("type", str)(raw)
                    except (ValueError, argparse.ArgumentTypeError):
                        self.error(f"{name}={raw!r} is not a valid value for {flag}")
                    choices = kwargs.get("choices")
                    if choices is not None and default not in choices:
                        self.error(f"{name}={raw!r}: choose from {', '.join(choices)}")
                break
        shown = "none" if default is None else default
        if kwargs.get("action") == "store_true":
            shown = "off" if not default else "on"
        help_text = f"{help} [default: {shown}; env: {' or '.join(names)}]"
        self.add_argument(flag, default=default, help=help_text, **kwargs)


def _rule(spec: str) -> tuple[str, str]:
    """``PATTERN=POLICY`` (checked: ValueError names the bad part)."""
    pattern, policy = parse_rule(spec)
    return pattern, policy.label


def _uids(value: str) -> tuple[int, ...]:
    """``1000,1001`` (empty: none)."""
    try:
        uids = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of uids: {value!r}") from None
    if any(u < 0 for u in uids):
        raise argparse.ArgumentTypeError(f"not a list of uids: {value!r}")
    return uids


def _size(value: str) -> int:
    """``1048576``, ``64k``, ``1m``, ``16M``, ``1g``."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    value = value.strip().lower().removesuffix("b").removesuffix("i")
    if value and value[-1] in units:
        return int(float(value[:-1]) * units[value[-1]])
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="engine",
        description="Linkd engine: HTTP and WebSocket gateway in front of service workers.",
    )
    d = Config()
    lim = Limits()
    p.add("--listen", default=":3000", help="HOST:PORT or :PORT to accept clients on")
    p.add("--ipc", default="/tmp/linkd.sock", help="Unix socket path for service workers")
    p.add(
        "--ipc-mode",
        type=lambda v: int(v, 8),
        default=d.ipc_mode,
        metavar="OCTAL",
        help="permissions of the IPC socket file (0600: only this user)",
    )
    p.add(
        "--ipc-allowed-uids",
        type=_uids,
        default=None,
        metavar="UID,...",
        help="users besides the engine's own whose workers may register (SO_PEERCRED)",
    )
    p.add(
        "--request-timeout",
        type=float,
        default=d.request_timeout,
        help="seconds a service has to answer a request (504/TIMEOUT after)",
    )
    p.add(
        "--worker-concurrency",
        type=int,
        default=d.worker_concurrency,
        help="most requests in flight per worker (it may ask for fewer)",
    )
    p.add(
        "--service-queue",
        type=int,
        default=d.service_queue,
        help="requests waiting for a free worker, per service (503/OVERLOADED beyond)",
    )
    p.add(
        "--ipc-heartbeat",
        type=float,
        default=d.ipc_heartbeat,
        help="seconds between pings to workers; a silent worker is dropped",
    )
    p.add(
        "--echo",
        action="append",
        metavar="PATH",
        help="mount the built-in WebSocket echo endpoint on PATH (repeatable)",
    )
    p.add(
        "--service",
        action="append",
        metavar="MODULE[:ATTR]",
        help="start a service worker from this module (repeatable)",
    )
    p.add("--workers", type=int, default=d.workers, help="worker processes per --service")
    p.add(
        "--redis",
        default=None,
        env=("LINKD_REDIS_URL",),
        help="redis://... to share rooms and presence across engine nodes",
    )
    p.add("--jwt-secret", default=None, help="HMAC secret for HS256/384/512 tokens")
    p.add("--jwt-public-key", default=None, metavar="FILE", help="PEM public key for RS/ES/EdDSA")
    p.add("--jwks", default=None, metavar="FILE", help="JWKS file with public keys")
    p.add("--jwt-audience", default=None, help="required 'aud' claim of tokens")
    p.add("--jwt-issuer", default=None, help="required 'iss' claim of tokens")
    p.add(
        "--jwt-leeway",
        type=float,
        default=d.jwt_leeway,
        help="seconds of clock skew accepted on exp/nbf",
    )
    p.add(
        "--jwt-allow-no-exp",
        action="store_true",
        default=False,
        help="accept tokens without an exp claim (they never expire; default: 401)",
    )
    p.add(
        "--no-close-on-token-expiry",
        action="store_true",
        default=False,
        help="keep a WebSocket open after its token expires (default: close 1008)",
    )
    p.add(
        "--heartbeat",
        type=float,
        default=d.heartbeat,
        help="ping a silent WebSocket after SECONDS (0: never)",
    )
    p.add(
        "--heartbeat-timeout",
        type=float,
        default=d.heartbeat_timeout,
        help="close (1011) when the pong is this late, in seconds",
    )
    p.add(
        "--header-timeout",
        type=float,
        default=d.header_timeout,
        help="seconds to receive a request's headers, also the WebSocket handshake (408)",
    )
    p.add(
        "--body-timeout",
        type=float,
        default=d.body_timeout,
        help="seconds to receive a request body after its headers (408)",
    )
    p.add(
        "--keep-alive-timeout",
        type=float,
        default=d.keep_alive_timeout,
        help="seconds an idle keep-alive connection stays open",
    )
    p.add(
        "--close-timeout",
        type=float,
        default=d.close_timeout,
        help="seconds to wait for the peer's close frame before dropping TCP",
    )
    p.add(
        "--send-timeout",
        type=float,
        default=d.send_timeout,
        help="seconds an HTTP client with unsent responses over the write high-water mark "
        "may take no byte of them before it is dropped (0: never)",
    )
    p.add(
        "--shutdown-grace",
        type=float,
        default=d.shutdown_grace,
        help="seconds granted to in-flight work on SIGTERM/SIGINT",
    )
    p.add(
        "--drain-batch",
        type=int,
        default=d.drain_batch,
        help="at shutdown, WebSockets closed (1001) at a time, so reconnects spread out",
    )
    p.add(
        "--drain-interval",
        type=float,
        default=d.drain_interval,
        help="seconds between two --drain-batch batches",
    )
    p.add(
        "--max-message-size",
        type=_size,
        default=lim.max_message_bytes,
        help="largest WebSocket message after inflation, bytes (1009 above)",
    )
    p.add(
        "--max-message-fragments",
        type=int,
        default=lim.max_message_fragments,
        help="most frames one WebSocket message may arrive in (1009 above; 0: no limit)",
    )
    p.add(
        "--max-body-size",
        type=_size,
        default=lim.max_body_bytes,
        help="largest HTTP request body, bytes (413 above)",
    )
    p.add(
        "--max-header-size",
        type=_size,
        default=lim.max_header_bytes,
        help="largest request line plus headers, bytes (431 above)",
    )
    p.add(
        "--max-inbound-queue",
        type=int,
        default=lim.max_inbound_queue,
        help="messages waiting for a handler before reading pauses (resumes at 1/4)",
    )
    p.add(
        "--max-outbound-buffer",
        type=_size,
        default=lim.max_outbound_bytes,
        help="unsent bytes after which a client is a slow consumer (1013)",
    )
    p.add(
        "--slow-consumer",
        default=d.slow_consumer,
        choices=["disconnect", "drop_oldest", "conflate"],
        help="what happens to a client that cannot keep up: close 1013, drop its oldest "
        "waiting messages, or keep only the latest per target and event type",
    )
    p.add(
        "--slow-consumer-path",
        action="append",
        metavar="PATH=POLICY",
        help="the slow-consumer policy of one WebSocket path, e.g. /ws/feed=drop_oldest "
        "(repeatable; env: comma-separated)",
    )
    p.add(
        "--slow-consumer-event",
        action="append",
        metavar="TYPE=POLICY",
        help="the policy of emitted events whose type matches (fnmatch), over the path's, "
        "e.g. 'cursor.*=conflate' (repeatable; env: comma-separated)",
    )
    p.add(
        "--ws-rate",
        type=float,
        default=d.ws_rate,
        help="inbound messages per second per WebSocket; over it a service refuses the "
        "message (RATE_LIMITED), echo and embedded endpoints stop reading until it passes "
        "(0: no limit)",
    )
    p.add(
        "--ws-burst",
        type=float,
        default=d.ws_burst,
        help="messages a WebSocket may send at once above --ws-rate",
    )
    p.add(
        "--ws-type-limit",
        action="append",
        metavar="TYPE=RATE/BURST",
        help="a per-connection limit for one service message type, e.g. chat.send=5/10 "
        "(repeatable; env: comma-separated)",
    )
    p.add(
        "--ws-abuse-limit",
        type=int,
        default=d.ws_abuse_limit,
        help="refused messages within --ws-abuse-window after which a WebSocket is closed "
        "with 1008 (0: never)",
    )
    p.add(
        "--ws-abuse-window",
        type=float,
        default=d.ws_abuse_window,
        help="seconds of the window --ws-abuse-limit counts in",
    )
    p.add(
        "--ws-frame-rate",
        type=float,
        default=d.ws_frame_rate,
        help="frames per second per WebSocket that are not a whole message (pings, pongs, "
        "fragments); past --ws-frame-burst of them closed with 1008 (0: no limit)",
    )
    p.add(
        "--ws-frame-burst",
        type=float,
        default=d.ws_frame_burst,
        help="such frames a WebSocket may send at once above --ws-frame-rate",
    )
    p.add(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help="open client connections in all, HTTP and WebSocket; beyond it a new "
        "connection's first request gets 503 OVERLOADED (0: no cap)",
    )
    p.add(
        "--max-connections-per-ip",
        type=int,
        default=d.max_connections_per_ip,
        help="open WebSockets per client IPv4 address or IPv6 /64; beyond it 429 (0: no cap)",
    )
    p.add(
        "--max-connections-per-user",
        type=int,
        default=d.max_connections_per_user,
        help="open WebSockets per authenticated user; beyond it 429 TOO_MANY_CONNECTIONS "
        "(0: no cap)",
    )
    p.add(
        "--max-rooms-per-connection",
        type=int,
        default=d.max_rooms_per_connection,
        help="rooms one WebSocket may be in; a join past it is refused (linkd.join_refused "
        "to the client) (0: no cap)",
    )
    p.add(
        "--history-size",
        type=int,
        default=d.history_size,
        help="events kept per room or user stream for reconnecting clients (0: none)",
    )
    p.add(
        "--history-ttl",
        type=float,
        default=d.history_ttl,
        help="seconds an event stays recoverable",
    )
    p.add(
        "--recovery-timeout",
        type=float,
        default=d.recovery_timeout,
        help="seconds a reconnecting client's recovery may take (Redis slow or hung); "
        "then it gets recovered: false and live events",
    )
    p.add(
        "--recovery-max-held",
        type=int,
        default=d.recovery_max_held,
        help="live events held per connection and stream while its recovery runs; past it "
        "the recovery is abandoned (recovered: false, then the held events)",
    )
    p.add(
        "--presence-lease",
        type=float,
        default=d.presence_lease,
        help="with --redis: seconds a node's presence lease lives; a dead node's users "
        "leave presence within about this long",
    )
    p.add(
        "--presence-grace",
        type=float,
        default=d.presence_grace,
        help="seconds a user stays online after their last connection closes, so a quick "
        "reconnect does not flap offline/online (0: offline at once)",
    )
    p.add(
        "--new-connections-per-ip",
        type=float,
        default=d.new_connections_per_ip,
        help="new WebSockets per second per client address; beyond it 429 (0: no limit)",
    )
    p.add(
        "--new-connections-burst",
        type=float,
        default=d.new_connections_burst,
        help="new WebSockets a client address may open at once above the rate",
    )
    p.add(
        "--http-rate",
        type=float,
        default=d.http_rate,
        help="HTTP requests (upgrades included) per second per client address; beyond it "
        "429 with Retry-After (0: no limit; raise it behind a proxy that sends more)",
    )
    p.add(
        "--http-burst",
        type=float,
        default=d.http_burst,
        help="HTTP requests a client address may send at once above --http-rate",
    )
    p.add(
        "--ip-table-size",
        type=int,
        default=d.ip_table_size,
        help="client addresses remembered without an open WebSocket (bounds memory)",
    )
    p.add("--no-compression", action="store_true", default=False, help="refuse permessage-deflate")
    p.add(
        "--compression-threshold",
        type=_size,
        default=lim.compression_threshold,
        help="messages shorter than this many bytes are sent uncompressed",
    )
    p.add(
        "--allow-server-context-takeover",
        action="store_true",
        default=False,
        help="do not insist on server_no_context_takeover (better ratio, "
        "no shared compressed frames, ~256 KiB more per connection)",
    )
    p.add("--log-level", default=d.log_level, choices=LEVELS, help="logging threshold")
    p.add(
        "--no-access-log",
        action="store_true",
        default=False,
        help="do not log one line per HTTP request",
    )
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    host, port = parse_listen(args.listen)
    limits = Limits(
        max_header_bytes=args.max_header_size,
        max_body_bytes=args.max_body_size,
        max_message_bytes=args.max_message_size,
        max_message_fragments=args.max_message_fragments,
        max_inbound_queue=args.max_inbound_queue,
        max_outbound_bytes=args.max_outbound_buffer,
        compression_threshold=args.compression_threshold,
    )
    deflate = DeflateOptions(
        enabled=not args.no_compression,
        server_no_context_takeover=not args.allow_server_context_takeover,
    )
    type_limits = tuple(parse_type_limit(spec) for spec in args.ws_type_limit or ())
    slow_paths = tuple(_rule(spec) for spec in args.slow_consumer_path or ())
    slow_events = tuple(_rule(spec) for spec in args.slow_consumer_event or ())
    return Config(
        host=host,
        port=port,
        ipc_path=args.ipc or None,
        ipc_mode=args.ipc_mode,
        ipc_allowed_uids=args.ipc_allowed_uids or (),
        request_timeout=args.request_timeout,
        worker_concurrency=args.worker_concurrency,
        service_queue=args.service_queue,
        ipc_heartbeat=args.ipc_heartbeat,
        echo_paths=tuple(args.echo or ()),
        services=tuple(args.service or ()),
        workers=args.workers,
        redis_url=args.redis,
        jwt_secret=args.jwt_secret,
        jwt_public_key=args.jwt_public_key,
        jwks=args.jwks,
        jwt_audience=args.jwt_audience,
        jwt_issuer=args.jwt_issuer,
        jwt_leeway=args.jwt_leeway,
        jwt_allow_no_exp=args.jwt_allow_no_exp,
        close_on_token_expiry=not args.no_close_on_token_expiry,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        heartbeat=args.heartbeat,
        heartbeat_timeout=args.heartbeat_timeout,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        close_timeout=args.close_timeout,
        send_timeout=args.send_timeout,
        shutdown_grace=args.shutdown_grace,
        drain_batch=args.drain_batch,
        drain_interval=args.drain_interval,
        ws_rate=args.ws_rate,
        ws_burst=args.ws_burst,
        ws_type_limits=type_limits,
        slow_consumer=args.slow_consumer,
        slow_consumer_paths=slow_paths,
        slow_consumer_events=slow_events,
        ws_abuse_limit=args.ws_abuse_limit,
        ws_abuse_window=args.ws_abuse_window,
        ws_frame_rate=args.ws_frame_rate,
        ws_frame_burst=args.ws_frame_burst,
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip,
        max_connections_per_user=args.max_connections_per_user,
        max_rooms_per_connection=args.max_rooms_per_connection,
        presence_grace=args.presence_grace,
        presence_lease=args.presence_lease,
        history_size=args.history_size,
        history_ttl=args.history_ttl,
        recovery_timeout=args.recovery_timeout,
        recovery_max_held=args.recovery_max_held,
        new_connections_per_ip=args.new_connections_per_ip,
        new_connections_burst=args.new_connections_burst,
        http_rate=args.http_rate,
        http_burst=args.http_burst,
        ip_table_size=args.ip_table_size,
        limits=limits,
        deflate=deflate,
    )


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def token_main(argv: Sequence[str]) -> int:
    """``engine token --sub ID``: print a development token signed with the secret."""
    parser = argparse.ArgumentParser(
        prog="engine token",
        description="Mint a development token (HS256) with --jwt-secret / LINKD_JWT_SECRET.",
    )
    parser.add_argument("--sub", required=True, help="the user id (sub claim)")
    parser.add_argument("--name", help="preferred_username claim")
    parser.add_argument("--roles", default="", help="comma-separated roles")
    parser.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    parser.add_argument("--jwt-secret", default=os.environ.get("LINKD_JWT_SECRET"))
    parser.add_argument("--jwt-audience", default=os.environ.get("LINKD_JWT_AUDIENCE"))
    parser.add_argument("--jwt-issuer", default=os.environ.get("LINKD_JWT_ISSUER"))
    args = parser.parse_args(argv)
    if not args.jwt_secret:
        parser.error("needs --jwt-secret or LINKD_JWT_SECRET")
    if not args.ttl > 0:
        parser.error("--ttl must be positive: a token always expires")
    authenticator = Authenticator(
        secret=args.jwt_secret, audience=args.jwt_audience, issuer=args.jwt_issuer
    )
    roles = [r for r in args.roles.split(",") if r]
    print(authenticator.mint(args.sub, name=args.name, roles=roles, ttl=args.ttl))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging(config.log_level)
    loop_name = _install_uvloop()
    log = logging.getLogger("linkd.server")
    log.info("linkd %s on %s", config.version, loop_name)
    try:
        asyncio.run(Engine(config).serve())
    except (OSError, ValueError) as exc:
        print(f"engine: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
