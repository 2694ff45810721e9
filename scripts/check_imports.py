"""Fail if a module imports across a forbidden boundary, or if engine/ or sdk/ has an
import circle or an arrow pointing up.

1. Boundaries (the top-level packages): ``protocol`` may import only the standard
   library (minus I/O and clocks), h11, wsproto, cbor2 and orjson, never ``engine`` or
   ``sdk``; ``sdk`` never imports ``engine``; the Python client imports none of them.
2. Circles: the module graph of ``engine/`` and ``sdk/`` is built from the AST with
   EVERY import in it: module level, under ``if TYPE_CHECKING:``, inside functions. A
   circle is printed and fails the check (a deferred import hides a circle from the
   interpreter, not from a reader).
3. Layers: ``engine``'s packages in their declared order, top to bottom
   (docs/architecture.md draws it). A module may import its own layer or one below it,
   never one above.
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

#: engine's layers, top to bottom: an import may point at its own layer or DOWN only.
#: One name per line is a module or a package (every module under it).
LAYERS: list[tuple[str, ...]] = [
    ("engine", "engine.__main__"),  # the façade embedders import, and `python -m engine`
    ("engine.cli",),  # the `engine` command
    ("engine.server",),  # Engine: the one composition root
    ("engine.http",),  # HttpProtocol over HttpConn; the upgrade hand-off
    ("engine.ws",),  # WsProtocol over WsConn: outbound, lossy, inbound, guards
    ("engine.node",),  # what the protocols share (built by server, passed in)
    ("engine.services",),  # IPC listener, worker connections, registry, routing
    ("engine.hub",),  # rooms, publish, fan-out
    ("engine.brokers",),  # numbering and cross-node delivery; presence
    ("engine.api",),  # Request, Response, WebSocketEndpoint, WebSocket, Routes
    ("engine.auth",),  # token verification
    ("engine.config",),  # Config
    ("engine.tls",),  # the listener's TLS context and its reload on SIGHUP
    ("engine.core",),  # sweeper, corker, metrics, tasks
    ("engine.limits",),  # rate limits, slow-consumer policies: pure bookkeeping
    ("engine.log", "engine.version"),  # logging set-up, redaction; the version
]

GRAPHED = ("engine", "sdk")

#: Circles known and owned elsewhere, each with its reason: printed, not failed. Keep
#: this empty; an entry is debt with a name on it.
KNOWN_CIRCLES: dict[frozenset[str], str] = {}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def edges_of(root: Path, path: Path, modules: set[str]) -> set[str]:
    """The graphed modules ``path`` imports (every import statement, wherever it is)."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def add(target: str) -> None:
        # The deepest graphed module the dotted name denotes.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                add(sub if sub in modules else mod)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module, as one circle in it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(circle_in(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def circle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One concrete circle through the component's first module (breadth-first)."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return sorted(component)  # pragma: no cover - a component always has a circle


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer)
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if module == prefix or module.startswith(prefix + "."):
                if prefix == "engine" and module != "engine" and module != "engine.__main__":
                    continue
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), i)
    return None if best is None else best[1]


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    bad = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            for name in sorted(imports_of(path) & forbidden):
                bad.append(f"{path.relative_to(root)} imports {name}")

    paths = {module_name(root, p): p for top in GRAPHED for p in sorted((root / top).rglob("*.py"))}
    modules = set(paths)
    graph = {name: edges_of(root, path, modules) for name, path in paths.items()}
    for circle in cycles(graph):
        known = KNOWN_CIRCLES.get(frozenset(circle))
        if known is not None:
            print("known import circle (" + known + "): " + " -> ".join(circle))
            continue
        bad.append("import circle: " + " -> ".join(circle))
    for name in sorted(graph):
        if not name.startswith("engine"):
            continue
        mine = layer_of(name)
        if mine is None:
            bad.append(f"{name}: in no layer of scripts/check_imports.py LAYERS")
            continue
        for target in sorted(graph[name]):
            theirs = layer_of(target)
            if theirs is not None and theirs < mine:
                bad.append(f"{name} imports {target}, a layer above it")
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
