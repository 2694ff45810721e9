"""Every flag of ``engine``, its default and its help (engine/cli/parser.py layers them).

A flag added here is also a config-file key, a ``LINKD_*`` variable, a line of
``engine config example`` and a line of ``--help``: nothing else to register.

Over 400 lines on purpose: it is a table (one declaration per flag, grouped as
``--help`` shows them), and one table is easier to read than pieces of one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.cli import values
from engine.cli.parser import Parser
from engine.config import Config
from engine.log import LEVELS
from protocol import Limits

__all__ = ["build_parser"]


def build_parser(
    file_values: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Parser:
    """Every flag of ``engine``; defaults from ``file_values`` (a config file's, converted)
    and ``environ`` (default: ``os.environ``), the environment winning."""
    p = Parser(
        prog="engine",
        description="Linkd engine: HTTP and WebSocket gateway in front of service workers.",
        epilog="Subcommands: engine config check FILE | engine config example | "
        "engine token --sub ID | engine publish ROOM EVENT JSON | engine disconnect USER | "
        "engine info | engine api METHOD JSON (each with --help).",
        file_values=file_values,
        environ=environ,
    )
    d = Config()
    lim = Limits()
    p.add(
        "--config",
        default=None,
        metavar="FILE",
        help="TOML file of settings, keys named like the flags without -- "
        "(engine config example prints one); flags and LINKD_* variables beat it",
    )
    p.add(
        "--listen",
        type=values.listen,
        default=":3000",
        help="HOST:PORT or :PORT to accept clients on",
    )
    p.add("--ipc", default="/tmp/linkd.sock", help="Unix socket path for service workers")
    p.add(
        "--ipc-mode",
        type=values.octal,
        default=d.ipc_mode,
        metavar="OCTAL",
        help="permissions of the IPC socket file (0600: only this user)",
    )
    p.add(
        "--ipc-allowed-uids",
        type=values.uids,
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
        "--processes",
        type=values.processes,
        default=d.processes,
        metavar="N|auto",
        help="engine processes sharing --listen (SO_REUSEPORT; auto: one per core), each "
        "with its own IPC socket (--ipc PATH.0, PATH.1, ...) and --service workers; "
        "more than 1 needs --redis; a crashed one is restarted",
    )
    p.add(
        "--redis",
        default=None,
        metavar="URL",
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
        type=values.size,
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
        type=values.size,
        default=lim.max_body_bytes,
        help="largest HTTP request body, bytes (413 above)",
    )
    p.add(
        "--max-header-size",
        type=values.size,
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
        type=values.size,
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
        type=values.rule_spec,
        metavar="PATH=POLICY",
        help="the slow-consumer policy of one WebSocket path, e.g. /ws/feed=drop_oldest "
        "(repeatable; env: comma-separated)",
    )
    p.add(
        "--slow-consumer-event",
        action="append",
        type=values.rule_spec,
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
        type=values.type_limit_spec,
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
        type=values.size,
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
    p.add(
        "--tls-cert",
        default=None,
        metavar="FILE",
        help="PEM certificate chain (leaf first): serve wss:// and https:// on --listen; "
        "re-read on SIGHUP",
    )
    p.add(
        "--tls-key",
        default=None,
        metavar="FILE",
        help="PEM private key of --tls-cert (keep it chmod 600); re-read on SIGHUP",
    )
    p.add(
        "--tls-ciphers",
        default=d.tls_ciphers,
        metavar="OPENSSL",
        help="OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's, all AEAD)",
    )
    p.add(
        "--tls-min-version",
        default=d.tls_min_version,
        choices=("1.2", "1.3"),
        help="oldest TLS version accepted",
    )
    p.add(
        "--admin-listen",
        type=values.listen,
        default=None,
        metavar="HOST:PORT",
        help="serve /metrics, /health and /ready (plain HTTP) on this private address, "
        "e.g. 127.0.0.1:9090; with --processes N, process I on PORT+I (default: off)",
    )
    p.add(
        "--admin-password",
        default=None,
        metavar="PASSWORD",
        help="turn on the admin page (/admin on --admin-listen, docs/admin.md) behind a "
        "login with this password; a secret, never logged. Default: no page",
    )
    p.add(
        "--api-key",
        action="append",
        metavar="KEY",
        help="a key of the server API (POST /api/... on --admin-listen, docs/server-api.md), "
        "sent as 'Authorization: apikey KEY' (repeatable; env: comma-separated). "
        "Default: none, the API is off",
    )
    p.add(
        "--api-rate",
        type=float,
        default=d.api_rate,
        help="server API calls per second per key, and per address with a wrong key "
        "(429 beyond; 0: no limit)",
    )
    p.add("--api-burst", type=float, default=d.api_burst, help="calls at once above --api-rate")
    p.add(
        "--api-max-body",
        type=int,
        default=d.api_max_body,
        help="bytes of a server API request body at most (413 beyond)",
    )
    p.add(
        "--api-on-client-port",
        action="store_true",
        default=False,
        help="also serve the server API under /api/ on --listen, the client port",
    )
    p.add(
        "--public-metrics",
        action="store_true",
        default=False,
        help="also answer GET /metrics on --listen, the client port (default: 404 there)",
    )
    p.add(
        "--proxy-protocol",
        action="store_true",
        default=False,
        help="every connection starts with a PROXY protocol header (v1 or v2: HAProxy "
        "send-proxy[-v2], AWS NLB) that alone gives the client's address; others are "
        "closed, so let only the balancer reach --listen",
    )
    p.add(
        "--trusted-proxies",
        type=values.cidrs,
        default=None,
        metavar="CIDR,...",
        help="believe --forwarded-header only from these peers; the client is the "
        "rightmost hop not among them",
    )
    p.add(
        "--forwarded-header",
        default=d.forwarded_header,
        choices=("x-forwarded-for", "forwarded"),
        help="the header --trusted-proxies write (only that one is read)",
    )
    p.add(
        "--allowed-origins",
        type=values.origins,
        default=None,
        metavar="ORIGIN,...",
        help="origins whose pages may open a WebSocket (https://app.example.com, "
        "https://*.example.com); others get 403. Default: any origin (a warning)",
    )
    p.add(
        "--require-origin",
        action="store_true",
        default=False,
        help="refuse (403) WebSocket handshakes without Origin too (non-browser clients)",
    )
    p.add("--log-level", default=d.log_level, choices=LEVELS, help="logging threshold")
    p.add(
        "--no-access-log",
        action="store_true",
        default=False,
        help="do not log one line per HTTP request",
    )
    return p
