"""Logging set-up for the CLI (one line per event, on stderr), and credential redaction.

Clients put tokens in the query string (``/ws/chat?token=<jwt>``: browsers cannot set
headers on a WebSocket), so a request target is never logged as received:
``redact_target`` replaces the value of every parameter named like a credential.
The CLI's handler also runs every formatted line through ``redact_line``, so a target
logged by code that forgot ``redact_target`` is still covered.
"""

from __future__ import annotations

import logging
import re
import sys
from urllib.parse import unquote_plus

__all__ = ["REDACTED", "RedactingFilter", "configure_logging", "redact_line", "redact_target"]

LEVELS = ("critical", "error", "warning", "info", "debug")

#: What a credential's value becomes.
REDACTED = "[redacted]"

# Parameter names that carry a credential (case-insensitive): anything containing one
# of these words (access_token, id_token, api_key, apikey, x-amz-signature, client_secret,
# password, passwd, auth, authorization, session_id...), or exactly one of the short
# names that would match too much as a substring (an OAuth ``code``, a ``sig``).
_CREDENTIAL_WORDS = (
    r"token|jwt|secret|passw|pwd|auth|signature|credential|session|key|cookie|bearer"
)
_CREDENTIAL_NAMES = r"sig|code|otp|ticket|pass|pin"
_CREDENTIAL = re.compile(rf"(?:{_CREDENTIAL_WORDS})|^(?:{_CREDENTIAL_NAMES})$", re.IGNORECASE)

# In free text: ``?name=value`` / ``&name=value`` / ``;name=value`` with a credential
# name, and ``Bearer <token>``.
_IN_TEXT = re.compile(
    r"(?P<lead>[?&;](?P<name>[^=&;\s\"'?#]*)=)(?P<value>[^&;\s\"'#]+)"
    r"|(?P<bearer>\bbearer\s+)[A-Za-z0-9._~+/=-]+",
    re.IGNORECASE,
)


def is_credential_name(name: str) -> bool:
    """Whether a query parameter named ``name`` (percent-encoded or not) is a credential."""
    return bool(_CREDENTIAL.search(unquote_plus(name).strip()))


def redact_target(target: str) -> str:
    """``/ws?token=abc&room=1`` → ``/ws?token=[redacted]&room=1``; other bytes as received.

    Both ``&`` and ``;`` separate parameters here (some frameworks split on ``;``):
    redacting one parameter too many is harmless, one too few is a leaked secret.
    """
    path, sep, query = target.partition("?")
    if not sep or "=" not in query:
        return target
    parts = re.split(r"([&;])", query)
    for i in range(0, len(parts), 2):
        name, eq, value = parts[i].partition("=")
        if eq and value and is_credential_name(name):
            parts[i] = f"{name}={REDACTED}"
    return f"{path}?{''.join(parts)}"


def _redact_match(match: re.Match[str]) -> str:
    if match.group("bearer"):
        return match.group("bearer") + REDACTED
    if is_credential_name(match.group("name")):
        return match.group("lead") + REDACTED
    return match.group(0)


def redact_line(text: str) -> str:
    """Every ``name=value`` with a credential name, and every bearer token, redacted."""
    if "=" not in text and "earer" not in text:
        return text
    return _IN_TEXT.sub(_redact_match, text)


class RedactingFilter(logging.Filter):
    """A handler filter: the formatted message of every record goes through ``redact_line``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_line(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger("linkd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
