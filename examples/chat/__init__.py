"""The chat example: rooms, messages, typing and presence over Linkd, on Postgres.

Run it under the engine with ``--service examples.chat.service`` (or ``examples.chat``);
see docs/chat.md.
"""

from __future__ import annotations

from examples.chat.service import service

__all__ = ["service"]
