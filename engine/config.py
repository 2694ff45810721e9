"""Engine configuration: one frozen dataclass, built from CLI flags, env vars or code."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from engine.limits.ratelimit import check_rate
from engine.limits.slow import Policy, PolicyTable
from engine.tls import DEFAULT_CIPHERS
from engine.version import __version__
from protocol import Limits
from protocol.http.forwarded import parse_networks
from protocol.http.origin import parse_origins
from protocol.ws import DeflateOptions

__all__ = ["Config", "parse_listen"]


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[::1]:PORT`` → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen wants HOST:PORT or :PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything an engine needs to start. Every field has a default that works.

    Timeouts are in seconds. Sizes are in bytes and live in ``limits``.
    """

    host: str = "0.0.0.0"
    port: int = 3000
    #: Unix socket where service workers connect; None: no IPC (embedding default).
    ipc_path: str | None = None
    #: Permissions of the socket file: only the engine's user may connect.
    ipc_mode: int = 0o600
    #: Users (besides the engine's own) whose workers may register; others are refused
    #: from SO_PEERCRED even if the socket mode lets them connect.
    ipc_allowed_uids: tuple[int, ...] = ()
    #: Largest IPC frame accepted from a worker (docs/ipc.md §2).
    ipc_max_frame: int = 8 * 1024 * 1024
    #: Ping workers this often; one that has not answered a heartbeat later is dropped.
    ipc_heartbeat: float = 5.0
    #: A service request unanswered this long fails with TIMEOUT (HTTP 504).
    request_timeout: float = 30.0
    #: Upper bound of requests in flight per worker (the worker may ask for fewer).
    worker_concurrency: int = 256
    #: Requests waiting for a free worker, per service; beyond it OVERLOADED (503).
    service_queue: int = 1024
    #: Paths that mount the built-in WebSocket echo endpoint.
    echo_paths: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    workers: int = 1
    redis_url: str | None = None
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: str | None = None
    jwks: str | None = None
    #: Required ``aud`` / ``iss`` of tokens, when set.
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    #: Clock skew accepted on ``exp``/``nbf``, seconds.
    jwt_leeway: float = 30.0
    #: Accept tokens without ``exp``. Off: such a token would be valid forever, so a
    #: leaked one could never be revoked by waiting.
    jwt_allow_no_exp: bool = False
    #: Close a WebSocket with 1008 when its token expires.
    close_on_token_expiry: bool = True
    log_level: str = "info"
    access_log: bool = True

    #: Ping a WebSocket that has been silent this long; 0 disables heartbeats.
    heartbeat: float = 20.0
    #: Close (1011) when the pong is not back this long after the ping.
    heartbeat_timeout: float = 20.0
    #: From the first byte of a request (or the connection) to its last header byte.
    #: This also bounds the WebSocket opening handshake. Against slowloris.
    header_timeout: float = 10.0
    #: From the end of the headers to the end of the body.
    body_timeout: float = 30.0
    #: An idle keep-alive connection is closed after this long.
    keep_alive_timeout: float = 5.0
    #: After we send a close frame, wait this long for the peer's, then drop TCP.
    close_timeout: float = 5.0
    #: An HTTP client whose unsent responses are over the write high-water mark and
    #: that takes no byte of them for this long is dropped: a client that pipelines
    #: and never reads would otherwise hold its connection slot and buffers forever.
    #: Progress (any byte taken) restarts it, so a slow download is not cut. 0: never.
    send_timeout: float = 30.0
    #: SIGTERM/SIGINT: time granted to in-flight work before connections are dropped.
    shutdown_grace: float = 10.0
    #: At shutdown, WebSockets are closed (1001) this many at a time, every
    #: ``drain_interval`` seconds, so their reconnects do not all land at once.
    drain_batch: int = 500
    drain_interval: float = 0.1
    #: Resolution of the single timer sweeper that drives every timeout above.
    timer_resolution: float = 0.25

    #: Inbound WebSocket messages per second per connection, and the burst above it
    #: (token bucket). Over it a service endpoint refuses the message (RATE_LIMITED);
    #: a raw endpoint (echo, embedders) stops reading until the rate allows the next
    #: one, so nothing is lost and TCP slows the sender down. 0 disables.
    ws_rate: float = 100.0
    ws_burst: float = 200.0
    #: Extra limits for service message types: ``(type, rate, burst)``.
    ws_type_limits: tuple[tuple[str, float, float], ...] = ()
    #: More than this many refused messages within ``ws_abuse_window`` seconds:
    #: close 1008. 0: never close for it.
    ws_abuse_limit: int = 20
    ws_abuse_window: float = 10.0
    #: Frames per second per connection that are not a whole message (control frames,
    #: every fragment but a message's last; whole messages have ``ws_rate``), and the
    #: burst: past it close 1008. Each costs a parse whatever its size; a client pings
    #: about once a second and rarely fragments. The burst carries one message of
    #: ``max_message_fragments`` (1024); 512/s is 5x the message rate. Each connection
    #: a flood opens costs at most the burst (bench/hostile.py: 10000 made a ping
    #: flood hold the loop for 80 ms at a time). 0 disables.
    ws_frame_rate: float = 512.0
    ws_frame_burst: float = 1024.0
    #: Open client connections in all, HTTP and WebSocket (an upgrade keeps the slot
    #: of its HTTP connection); beyond it a new connection is answered 503 OVERLOADED
    #: and the connection closed; 0: no cap.
    max_connections: int = 100_000
    #: Open WebSockets per client address (IPv4, or IPv6 /64) (429 beyond); 0: no cap.
    #: Off by default: behind a load balancer or a NAT every client shares an address.
    max_connections_per_ip: int = 0
    #: New WebSockets per client address per second, and the burst (429 beyond); 0: off
    #: (by default, for the same reason).
    new_connections_per_ip: float = 0.0
    new_connections_burst: float = 40.0
    #: Addresses remembered without an open WebSocket (bounds the per-address table,
    #: and the table of the HTTP request rate).
    ip_table_size: int = 65536
    #: HTTP requests (upgrades included) per client address per second, and the burst
    #: (429 RATE_LIMITED with Retry-After beyond); 0: off. On by default, set far above
    #: one client because behind a NAT or a proxy every client shares the address: a
    #: NAT of thousands of people, or a page firing a hundred requests at once, stays
    #: under it, while one address cannot take more than about a fifth of a core (the
    #: engine answers about 5000 GET /health per second per core, measured). Raise it,
    #: or 0, behind a reverse proxy that forwards more than this.
    http_rate: float = 1000.0
    http_burst: float = 2000.0
    #: Open WebSockets per authenticated user, over every path (429 beyond); 0: no cap.
    max_connections_per_user: int = 100
    #: Rooms one connection may be in (a join past it is refused); 0: no cap. The chat
    #: joins every room of its user at connect; each membership costs memory, a broker
    #: subscription with Redis and work at close. 1000 (the most rooms ``?recover=`` may
    #: name) is far above what a person follows.
    max_rooms_per_connection: int = 1000
    #: What happens to a connection that cannot keep up (engine/limits/slow.py):
    #: "disconnect" (1013), "drop_oldest" or "conflate"; per path and per event type
    #: (fnmatch patterns) on top of the default.
    slow_consumer: str = "disconnect"
    slow_consumer_paths: tuple[tuple[str, str], ...] = ()
    slow_consumer_events: tuple[tuple[str, str], ...] = ()
    #: Recovery history (docs/recovery.md): events kept per room or user stream, and
    #: for how long (seconds). 0 events: numbered but not kept (nothing recoverable).
    history_size: int = 1000
    history_ttl: float = 300.0
    #: A recovery not answered within this many seconds (Redis hung, slow or lost)
    #: ends in ``recovered: false`` and live delivery: never a connection left waiting.
    recovery_timeout: float = 5.0
    #: Live events held per connection and stream while its recovery runs; past it the
    #: recovery is abandoned (``recovered: false``, then the held events): bounded memory.
    recovery_max_held: int = 1000
    #: A user whose last connection closed stays online this long (seconds), so a
    #: reload or a quick reconnect does not flap offline/online. 0: offline at once.
    presence_grace: float = 5.0
    #: With Redis: a node's presence lease (seconds); a node that dies disappears from
    #: presence within about this long plus a third of it.
    presence_lease: float = 10.0

    limits: Limits = field(default_factory=Limits)
    deflate: DeflateOptions = field(default_factory=DeflateOptions)
    backlog: int = 2048

    #: TLS on the listening port (wss://, https://): a PEM certificate chain (leaf
    #: first) and its PEM private key, both re-read on SIGHUP (engine/tls.py). None:
    #: plain TCP (TLS terminated by a proxy in front, or none).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: OpenSSL cipher string for TLS 1.2 (1.3 suites are OpenSSL's, all AEAD); the
    #: default is ECDHE with AES-GCM or ChaCha20 only (forward secrecy, no CBC).
    tls_ciphers: str = DEFAULT_CIPHERS
    #: Oldest protocol accepted: "1.2" or "1.3".
    tls_min_version: str = "1.2"

    #: ``engine --processes N``: engine processes sharing the listening port, each a
    #: broker node of ``redis_url`` (engine/cli/processes.py). Read by the ``engine``
    #: command only: an ``Engine`` object is always one process.
    processes: int = 1
    #: Which of those processes this one is (0-based, set by their parent); None: it
    #: is not one of them.
    process_index: int | None = None
    #: Bind the listening port with SO_REUSEPORT, so that several processes share it
    #: and the kernel spreads new connections over them.
    reuse_port: bool = False

    #: The admin listener (``--admin-listen``, engine/http/admin.py): ``/metrics``,
    #: ``/health`` and ``/ready`` on a port of their own, plain HTTP. None: none. With
    #: ``processes`` N, child I listens on ``admin_port + I``. Port 0: any free one
    #: (``Engine.admin_port`` says which).
    admin_host: str | None = None
    admin_port: int = 0
    #: The admin page (``--admin-password``, docs/admin.md): ``/admin`` on the admin
    #: listener, after a login with this password. None: no page (404). Never printed.
    admin_password: str | None = field(default=None, repr=False)
    #: Also answer ``GET /metrics`` on the client port. Off: anyone who can reach the
    #: client port would read the node's traffic and its services' names.
    public_metrics: bool = False

    #: Behind a balancer (docs/deployment.md): every connection must start with a
    #: PROXY protocol header (v1 or v2, HAProxy ``send-proxy[-v2]``, AWS NLB), and only
    #: that header gives the client's address. A connection without one is closed
    #: unanswered, so the port must be reachable by the balancer only.
    proxy_protocol: bool = False
    #: Peers (CIDRs or addresses) whose ``forwarded_header`` is believed: the client is
    #: the rightmost hop that is not one of them. Empty: the header is ignored.
    trusted_proxies: tuple[str, ...] = ()
    #: Which header those proxies write: "x-forwarded-for" or "forwarded" (RFC 7239).
    forwarded_header: str = "x-forwarded-for"
    #: Origins a browser page may open a WebSocket from (``https://app.example.com``,
    #: ``https://*.example.com``); others get 403 before the upgrade. None: any origin.
    allowed_origins: tuple[str, ...] | None = None
    #: Refuse (403) an upgrade without ``Origin`` too (only browsers send one).
    require_origin: bool = False

    #: Keys of the server API (``--api-key``, engine/http/server_api.py, docs/server-api.md):
    #: ``Authorization: apikey <key>`` must name one. Empty: the API is off (404). Never
    #: printed: out of the repr.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    #: Server API calls per second per key (and per address before a key is known),
    #: with ``api_burst`` at once; over it 429.
    api_rate: float = 100.0
    api_burst: float = 200.0
    #: The largest server API request body; over it 413.
    api_max_body: int = 64 * 1024
    #: Also serve the server API on the client port under ``/api/`` (default: only on
    #: ``--admin-listen``).
    api_on_client_port: bool = False

    def __post_init__(self) -> None:
        for name in (
            "heartbeat",
            "heartbeat_timeout",
            "header_timeout",
            "body_timeout",
            "keep_alive_timeout",
            "close_timeout",
            "send_timeout",
            "shutdown_grace",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.timer_resolution <= 0:
            raise ValueError("timer_resolution must be positive")
        check_rate("ws_rate/ws_burst", self.ws_rate, self.ws_burst)
        check_rate("http_rate/http_burst", self.http_rate, self.http_burst)
        check_rate("ws_frame_rate/ws_frame_burst", self.ws_frame_rate, self.ws_frame_burst)
        check_rate(
            "new_connections_per_ip/new_connections_burst",
            self.new_connections_per_ip,
            self.new_connections_burst,
        )
        for name, rate, burst in self.ws_type_limits:
            check_rate(f"ws_type_limits {name}", rate, burst)
        self.slow_consumer_policies()  # raises ValueError on an unknown policy
        if self.history_size < 0 or self.history_ttl <= 0:
            raise ValueError("history_size must not be negative and history_ttl positive")
        if self.recovery_timeout <= 0 or self.recovery_max_held < 1:
            raise ValueError("recovery_timeout must be positive and recovery_max_held at least 1")
        if self.drain_batch < 1 or self.drain_interval < 0:
            raise ValueError("drain_batch must be at least 1 and drain_interval not negative")
        check_rate("api_rate/api_burst", self.api_rate, self.api_burst)
        if self.admin_password is not None and self.admin_host is None:
            raise ValueError("--admin-password needs --admin-listen (the page is served there)")
        if self.api_max_body < 1 or any(not key for key in self.api_keys):
            raise ValueError("api_max_body must be positive and every api key non-empty")
        if self.presence_lease <= 0:
            raise ValueError("presence_lease must be positive")
        if self.presence_grace < 0:
            raise ValueError("presence_grace must not be negative")
        for name in (
            "ws_abuse_limit",
            "max_connections",
            "max_connections_per_ip",
            "max_connections_per_user",
            "max_rooms_per_connection",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.ws_abuse_window <= 0:
            raise ValueError("ws_abuse_window must be positive")
        if self.ip_table_size < 1:
            raise ValueError("ip_table_size must be at least 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_min_version not in ("1.2", "1.3"):
            raise ValueError(f"tls_min_version must be 1.2 or 1.3, got {self.tls_min_version!r}")
        if not self.tls_ciphers.strip():
            raise ValueError("tls_ciphers must not be empty")
        self._check_processes()
        self._check_edge()

    def _check_edge(self) -> None:
        if self.proxy_protocol and self.tls:
            # The header comes before the TLS handshake, which the TLS transport would
            # read as garbage; TLS belongs to the balancer in that set-up.
            raise ValueError(
                "--proxy-protocol and --tls-cert cannot be used together: terminate TLS "
                "at the balancer that sends the PROXY header (docs/deployment.md)"
            )
        parse_networks(self.trusted_proxies)
        if self.forwarded_header not in ("x-forwarded-for", "forwarded"):
            raise ValueError(
                f"forwarded_header must be x-forwarded-for or forwarded, "
                f"got {self.forwarded_header!r}"
            )
        if self.allowed_origins is not None:
            parse_origins(self.allowed_origins)

    def _check_processes(self) -> None:
        n = self.processes
        if n < 1:
            raise ValueError(f"--processes must be at least 1 (or auto), got {n}")
        if self.process_index is not None and not 0 <= self.process_index < n:
            raise ValueError(f"process_index {self.process_index} is not below processes {n}")
        if n == 1:
            return
        if not self.redis_url:
            # The in-memory broker is one process's: a room joined in one process would
            # not hear an emit from another, and presence would be N different views.
            raise ValueError(
                f"--processes {n} needs --redis URL: each process is a broker node, and "
                "rooms and presence are shared between them only through Redis. Start a "
                "Redis (redis-server --bind 127.0.0.1) and add --redis "
                "redis://127.0.0.1:6379/0, or run one process (--processes 1)"
            )
        if self.port == 0:
            raise ValueError(
                f"--processes {n} needs a fixed port in --listen: with port 0 each process "
                "would listen on a port of its own"
            )
        if self.admin_host is not None and self.admin_port == 0:
            raise ValueError(
                f"--processes {n} needs a fixed port in --admin-listen: process I listens "
                "on that port + I"
            )
        first = self.admin_port - (self.process_index or 0)  # a child's is first + I
        if self.admin_host is not None and first + n - 1 > 65535:
            raise ValueError(f"--admin-listen port + {n - 1} (the last process's) is over 65535")

    @property
    def tls(self) -> bool:
        """The listening port speaks TLS."""
        return bool(self.tls_cert and self.tls_key)

    def slow_consumer_policies(self) -> PolicyTable:
        return PolicyTable(
            Policy.parse(self.slow_consumer),
            [(path, Policy.parse(name)) for path, name in self.slow_consumer_paths],
            [(pattern, Policy.parse(name)) for pattern, name in self.slow_consumer_events],
        )

    @property
    def version(self) -> str:
        return __version__


def env(name: str, default: str | None = None) -> str | None:
    """``LINKD_<NAME>`` from the environment."""
    return os.environ.get(f"LINKD_{name.upper().replace('-', '_')}", default)
