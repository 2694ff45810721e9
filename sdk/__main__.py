"""``python -m sdk module[:attr] --ipc PATH``: import a module and run its service(s)."""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from .run import run
from .service import Service
from .worker import engine_uids_from_env

__all__ = ["find_services", "main"]


def find_services(target: str) -> list[Service]:
    """The services named by ``module[:attr]``.

    ``attr`` may name a Service or a list of them. Without it: the module's
    ``service`` variable, else its only Service instance.

    Raises:
        LookupError: nothing (or more than one thing) to run.
    """
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    if attr:
        value: Any = module
        for part in attr.split("."):
            value = getattr(value, part)
        if isinstance(value, Service):
            return [value]
        if isinstance(value, list | tuple) and value and all(isinstance(v, Service) for v in value):
            return list(value)
        raise LookupError(f"{target} is not a Service")
    named = getattr(module, "service", None)
    if isinstance(named, Service):
        return [named]
    found = {id(v): v for v in vars(module).values() if isinstance(v, Service)}
    if len(found) == 1:
        return list(found.values())
    if not found:
        raise LookupError(f"no Service in module {module_name}")
    names = sorted(k for k, v in vars(module).items() if isinstance(v, Service))
    raise LookupError(f"several Services in {module_name} ({', '.join(names)}): name one")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdk", description="Run a Linkd service.")
    parser.add_argument("target", help="module[:attr] holding the Service")
    parser.add_argument("--ipc", help="engine socket (default $LINKD_IPC or /tmp/linkd.sock)")
    parser.add_argument("--grace", type=float, default=10.0, help="drain grace period, s")
    parser.add_argument("--log-level", help="default $LINKD_LOG_LEVEL or info")
    parser.add_argument(
        "--engine-uids",
        metavar="UID,...",
        help="users besides ours whose engine we accept (default $LINKD_ENGINE_UIDS)",
    )
    args = parser.parse_args(argv)
    try:
        uids = engine_uids_from_env(
            None if args.engine_uids is None else {"LINKD_ENGINE_UIDS": args.engine_uids}
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        services = find_services(args.target)
    except (ImportError, LookupError, AttributeError) as exc:
        print(f"python -m sdk: {exc}", file=sys.stderr)
        return 2
    # Start-up's objects live as long as the process: frozen, full collections no
    # longer walk them (the engine does the same, engine/cli/__init__.py).
    gc.collect()
    gc.freeze()
    run(services, ipc=args.ipc, grace=args.grace, log_level=args.log_level, engine_uids=uids)
    return 0


if __name__ == "__main__":
    sys.exit(main())
