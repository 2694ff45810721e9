"""Fail if a module imports across a forbidden boundary (protocol/ must stay sans-I/O).

``protocol`` may import only the standard library (minus I/O and clocks), h11,
wsproto, cbor2 and orjson; it must never import ``engine``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

FORBIDDEN = {
    "protocol": {"engine", "sdk", "asyncio", "socket", "time", "uvloop", "redis", "asyncpg"},
    "sdk": {"engine"},
    # The client is what applications embed: it knows only the wire, not our internals.
    "clients/python/linkd_client": {"engine", "sdk", "protocol"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    bad = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            for name in sorted(imports_of(path) & forbidden):
                bad.append(f"{path.relative_to(root)} imports {name}")
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
