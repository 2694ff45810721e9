"""``engine publish | disconnect | info | api``: the server API from the command line
(docs/server-api.md), for cron jobs and an operator's shell.

Each command is one ``POST /api/<method>`` to ``--api-url`` (default the admin
listener's usual ``http://127.0.0.1:9090``) with ``--api-key`` or ``LINKD_API_KEY``.
The answer's JSON goes to stdout; an error (its status and the shared error body) to
stderr with exit status 1; a bad command line exits 2. The key is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

__all__ = ["API_COMMANDS", "api_main"]

#: The subcommands this module answers (``engine <command> ...``).
API_COMMANDS = frozenset({"publish", "disconnect", "info", "api"})

DEFAULT_URL = "http://127.0.0.1:9090"


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"engine {command}")
    if command == "publish":
        parser.description = "Publish EVENT with JSON data to ROOM (POST /api/publish)."
        parser.add_argument("room")
        parser.add_argument("event")
        parser.add_argument("data", help="the event's data, as JSON")
    elif command == "disconnect":
        parser.description = "Close every connection of USER on that node (POST /api/disconnect)."
        parser.add_argument("user")
        parser.add_argument("--code", type=int, default=None, help="close code (default 1000)")
        parser.add_argument("--reason", default=None, help="close reason")
    elif command == "info":
        parser.description = "The node: version, uptime, connections, workers (POST /api/info)."
    else:
        parser.description = "Call any server API method with a JSON body (POST /api/METHOD)."
        parser.add_argument("method")
        parser.add_argument("body", nargs="?", default="{}", help="the JSON body")
    parser.add_argument(
        "--api-url",
        default=os.environ.get("LINKD_API_URL") or DEFAULT_URL,
        help=f"where the server API is (env LINKD_API_URL; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=(os.environ.get("LINKD_API_KEY") or "").split(",")[0].strip() or None,
        help="the API key (default: env LINKD_API_KEY, the engine's own, its first key; "
        "prefer it: argv is visible to ps)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    return parser


def _json_arg(parser: argparse.ArgumentParser, text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        parser.error(f"{what} is not JSON: {exc}")


def api_main(command: str, argv: Sequence[str]) -> int:
    """Run ``engine <command> argv``; the process's exit status."""
    parser = _parser(command)
    args = parser.parse_args(list(argv))
    if not args.api_key:
        parser.error("needs --api-key or LINKD_API_KEY")
    if command == "publish":
        method = "publish"
        body: Any = {
            "room": args.room,
            "event": args.event,
            "data": _json_arg(parser, args.data, "the data"),
        }
    elif command == "disconnect":
        method = "disconnect"
        body = {"user": args.user}
        if args.code is not None:
            body["code"] = args.code
        if args.reason is not None:
            body["reason"] = args.reason
    elif command == "info":
        method, body = "info", {}
    else:
        method, body = args.method, _json_arg(parser, args.body, "the body")
    return _call(args.api_url, args.api_key, method, body, args.timeout)


def _call(url: str, key: str, method: str, body: Any, timeout: float) -> int:
    request = urllib.request.Request(
        f"{url.rstrip('/')}/api/{method}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json", "authorization": f"apikey {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()
        print(f"engine {method}: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"engine {method}: cannot reach {url}: {reason}", file=sys.stderr)
        return 1
    sys.stdout.write(answer.decode("utf-8", "replace") + "\n")
    return 0
