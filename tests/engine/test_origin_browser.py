"""``--allowed-origins`` in a real browser (Debian's Chromium driven by Playwright, as
tests/chat/test_browser.py does): a page served from an allowed origin opens a
WebSocket to the engine and gets its echo; the same page served from another origin
(another port: another origin) cannot connect, and the engine logs the refusal.

A missing Chromium fails this test (scripts/test.sh installs it); ``LINKD_ALLOW_SKIP=1``
turns that into a skip.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.browser import CHROMIUM, launch
from tests.helpers.proc import engine_process

PAGE = """<!doctype html>
<title>origin test</title>
<script>
const target = new URLSearchParams(location.search).get("ws");
window.result = new Promise((resolve) => {
  const ws = new WebSocket(target);
  ws.onopen = () => ws.send("hello from " + location.origin);
  ws.onmessage = (event) => { resolve("echo:" + event.data); ws.close(); };
  ws.onerror = () => resolve("error");
  ws.onclose = (event) => resolve("closed:" + event.code);
});
</script>
"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def static_site(root: Path) -> Iterator[int]:
    """A tiny http.server on a free loopback port serving ``root``."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_from_another_origin_cannot_connect(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium; scripts/test.sh does)"
        if os.environ.get("LINKD_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message)
    (tmp_path / "index.html").write_text(PAGE)
    with static_site(tmp_path) as allowed, static_site(tmp_path) as other:
        args = ["--echo", "/echo", "--allowed-origins", f"http://127.0.0.1:{allowed}"]
        with engine_process(args) as eng, launch() as browser:
            ws = f"ws://127.0.0.1:{eng.port}/echo"
            results = {}
            for name, port in (("allowed", allowed), ("other", other)):
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/index.html?ws={ws}")
                results[name] = page.evaluate("window.result")
                page.close()
            log = eng.output()
    assert results["allowed"] == f"echo:hello from http://127.0.0.1:{allowed}"
    assert results["other"] in ("error", "closed:1006"), results
    assert f"Origin 'http://127.0.0.1:{other}' is not allowed" in log
    assert f"Origin 'http://127.0.0.1:{allowed}'" not in log
