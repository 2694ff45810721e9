"""engine/log.py: credentials in request targets and log lines are redacted."""

from __future__ import annotations

import io
import logging

import pytest

from engine.log import configure_logging, redact_line, redact_target

SECRET = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ws/chat", "/ws/chat"),
        ("/ws/chat?room=1", "/ws/chat?room=1"),
        (f"/ws/chat?token={SECRET}", "/ws/chat?token=[redacted]"),
        (f"/ws/chat?room=1&token={SECRET}&recover=a", "/ws/chat?room=1&token=[redacted]&recover=a"),
        (f"/x?ACCESS_TOKEN={SECRET}", "/x?ACCESS_TOKEN=[redacted]"),
        (f"/x?id_token={SECRET}&jwt={SECRET}", "/x?id_token=[redacted]&jwt=[redacted]"),
        (
            f"/x?api_key={SECRET}&apikey={SECRET}&key={SECRET}",
            "/x?api_key=[redacted]&apikey=[redacted]&key=[redacted]",
        ),
        (
            f"/x?client_secret={SECRET}&password={SECRET}",
            "/x?client_secret=[redacted]&password=[redacted]",
        ),
        (
            f"/x?auth={SECRET}&X-Amz-Signature={SECRET}",
            "/x?auth=[redacted]&X-Amz-Signature=[redacted]",
        ),
        (f"/cb?code={SECRET}&state=xyz", "/cb?code=[redacted]&state=xyz"),
        (f"/x?sig={SECRET}&session_id={SECRET}", "/x?sig=[redacted]&session_id=[redacted]"),
        (f"/x?%74oken={SECRET}", "/x?%74oken=[redacted]"),  # percent-encoded name
        (f"/x?to%6Ben={SECRET}", "/x?to%6Ben=[redacted]"),
        (f"/x?a=1;token={SECRET}", "/x?a=1;token=[redacted]"),
        ("/x?token=&token", "/x?token=&token"),  # nothing to hide
        ("/x?zipcode=12345&country_code=fr", "/x?zipcode=12345&country_code=fr"),
    ],
)
def test_redact_target(target: str, expected: str) -> None:
    assert redact_target(target) == expected


def test_redact_line_covers_targets_and_bearer_tokens() -> None:
    line = f'127.0.0.1 "GET /ws?token={SECRET}&x=1 HTTP/1.1" 101 Authorization: Bearer {SECRET}'
    out = redact_line(line)
    assert SECRET not in out
    assert "/ws?token=[redacted]&x=1 " in out and "Bearer [redacted]" in out
    assert redact_line("nothing to see: room=1") == "nothing to see: room=1"


def test_cli_log_handler_redacts_every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger("linkd")
    saved = (root.handlers[:], root.level, root.propagate)
    configure_logging("info")
    try:
        logging.getLogger("linkd.anything").warning("upgrade of %s failed", f"/ws?jwt={SECRET}")
        logging.getLogger("linkd.access").info('"GET /x?password=%s"', SECRET)
    finally:
        root.handlers[:], root.propagate = saved[0], saved[2]
        root.setLevel(saved[1])
    text = stream.getvalue()
    assert SECRET not in text
    assert "/ws?jwt=[redacted] failed" in text and "password=[redacted]" in text
