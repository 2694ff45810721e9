"""From the command line, the environment and the config file to one ``Config``.

``load_settings`` finds ``--config`` (or ``LINKD_CONFIG``) before anything else, loads
and checks the file, builds the parser over it and the environment, parses the command
line and builds the ``Config``: flag > ``LINKD_*`` > file > built-in default.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.cli import values
from engine.cli.configfile import load_file
from engine.cli.flags import build_parser
from engine.config import Config, parse_listen
from engine.limits.ratelimit import parse_type_limit
from protocol import Limits
from protocol.ws import DeflateOptions

__all__ = ["Settings", "config_from_args", "config_path", "load_settings"]


#: Logged at start without ``--allowed-origins``: a page on any site may open a
#: WebSocket with its visitor's credentials (cookies; a token it can read).
_ANY_ORIGIN = (
    "--allowed-origins is not set: a web page on ANY origin may open a WebSocket to "
    "this engine; set it to the origins of your pages (docs/security.md)"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``engine`` runs with, and what to tell the operator once logging is up."""

    config: Config
    args: argparse.Namespace
    #: The config file read, if any.
    file: str | None
    #: Warnings about the file (its permissions), to log; they never hold a value.
    warnings: tuple[str, ...]


def config_path(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """``--config FILE`` from ``argv``, else ``LINKD_CONFIG``; empty means none."""
    pre = argparse.ArgumentParser(prog="engine", add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    path = known.config if known.config is not None else environ.get("LINKD_CONFIG")
    return path or None


def load_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Every layer, checked; a bad file, variable or flag exits 2 with what is wrong."""
    environ = os.environ if environ is None else environ
    path = config_path(argv, environ)
    file_values = {}
    warnings: tuple[str, ...] = ()
    if path is not None:
        loaded = load_file(path, build_parser(environ={}).settings)
        if loaded.errors:
            for error in loaded.errors:
                print(f"engine: {error}", file=sys.stderr)
            count = len(loaded.errors)
            print(
                f"engine: {path}: {count} error{'' if count == 1 else 's'}, not started",
                file=sys.stderr,
            )
            raise SystemExit(2)
        file_values, warnings = loaded.values, loaded.warnings
    parser = build_parser(file_values, environ)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if config.allowed_origins is None:
        warnings = (*warnings, _ANY_ORIGIN)
    return Settings(config, args, path, warnings)


def config_from_args(args: argparse.Namespace) -> Config:
    """The ``Config`` of parsed flags; ValueError names a setting it refuses."""
    host, port = parse_listen(args.listen)
    admin_host, admin_port = parse_listen(args.admin_listen) if args.admin_listen else (None, 0)
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
    slow_paths = tuple(values.rule(spec) for spec in args.slow_consumer_path or ())
    slow_events = tuple(values.rule(spec) for spec in args.slow_consumer_event or ())
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
        tls_cert=args.tls_cert or None,
        tls_key=args.tls_key or None,
        tls_ciphers=args.tls_ciphers,
        tls_min_version=args.tls_min_version,
        processes=args.processes,
        proxy_protocol=args.proxy_protocol,
        trusted_proxies=args.trusted_proxies or (),
        forwarded_header=args.forwarded_header,
        allowed_origins=args.allowed_origins,
        require_origin=args.require_origin,
        admin_host=admin_host,
        admin_port=admin_port,
        admin_password=args.admin_password or None,
        public_metrics=args.public_metrics,
        api_keys=tuple(args.api_key or ()),
        api_rate=args.api_rate,
        api_burst=args.api_burst,
        api_max_body=args.api_max_body,
        api_on_client_port=args.api_on_client_port,
    )
