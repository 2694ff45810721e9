"""Payload validation: every problem names its field, all reported at once.

``v = Fields(ctx.message)``, then ``room = v.uuid("room")`` and so on, then ``v.check()``,
which raises ``ValidationError`` with ``details`` mapping each bad field to what is
wrong (``{"room": "must be a UUID"}``). Values returned before ``check()`` are only
meaningful when it does not raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final
from uuid import UUID

import orjson

from sdk import ValidationError

__all__ = ["MAX_METADATA_BYTES", "Fields", "parse_uuid"]

#: A message's metadata, encoded as JSON, is at most this big (it is stored and fanned out).
MAX_METADATA_BYTES: Final = 4096


def parse_uuid(value: object) -> str | None:
    """The canonical (lower-case, hyphenated) form of a UUID string, else None."""
    if not isinstance(value, str) or len(value) != 36:
        return None
    try:
        return str(UUID(value))
    except ValueError:
        return None


class Fields:
    """Reads fields out of a JSON object payload, collecting what is wrong with them."""

    def __init__(self, data: Any, *, what: str = "data") -> None:
        self.errors: dict[str, str] = {}
        #: The payload is not an object: that is the one error, not each missing field.
        self._shapeless = data is not None and not isinstance(data, dict)
        if self._shapeless:
            self.errors[what] = "must be an object"
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}

    def _bad(self, name: str, problem: str) -> None:
        if not self._shapeless:
            self.errors.setdefault(name, problem)

    def uuid(self, name: str, *, required: bool = True) -> str:
        value = self.data.get(name)
        if value is None:
            if required:
                self._bad(name, "required")
            return ""
        parsed = parse_uuid(value)
        if parsed is None:
            self._bad(name, "must be a UUID")
            return ""
        return parsed

    def optional_uuid(self, name: str) -> str | None:
        return self.uuid(name, required=False) if self.data.get(name) is not None else None

    def text(
        self, name: str, *, min_len: int, max_len: int, required: bool = True, strip: bool = False
    ) -> str:
        """A string of ``min_len`` to ``max_len`` characters (after ``strip``, if asked)."""
        value = self.data.get(name)
        if value is None:
            if required:
                self._bad(name, "required")
            return ""
        if not isinstance(value, str):
            self._bad(name, "must be a string")
            return ""
        if "\x00" in value:
            # Postgres text cannot hold NUL: refuse it here rather than fail on insert.
            self._bad(name, "must not contain NUL characters")
            return ""
        if strip:
            value = value.strip()
        if not min_len <= len(value) <= max_len:
            self._bad(name, f"must be {min_len} to {max_len} characters")
            return ""
        return value

    def choice(self, name: str, choices: Sequence[str], *, default: str | None = None) -> str:
        value = self.data.get(name)
        if value is None:
            if default is None:
                self._bad(name, "required")
                return ""
            return default
        if value not in choices:
            self._bad(name, "must be one of " + ", ".join(choices))
            return ""
        return str(value)

    def integer(self, name: str, *, minimum: int, maximum: int, default: int) -> int:
        value = self.data.get(name)
        if value is None:
            return default
        # bool is an int in Python, not in JSON.
        if not isinstance(value, int) or isinstance(value, bool):
            self._bad(name, "must be an integer")
            return default
        if not minimum <= value <= maximum:
            self._bad(name, f"must be between {minimum} and {maximum}")
            return default
        return value

    def boolean(self, name: str) -> bool:
        value = self.data.get(name)
        if not isinstance(value, bool):
            self._bad(name, "required" if value is None else "must be true or false")
            return False
        return value

    def json_object(self, name: str) -> dict[str, Any]:
        value = self.data.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self._bad(name, "must be an object")
            return {}
        if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
            self._bad(name, f"must be at most {MAX_METADATA_BYTES} bytes of JSON")
            return {}
        return value

    def check(self) -> None:
        """Raise ``ValidationError`` naming every bad field, if there is one."""
        if self.errors:
            names = ", ".join(sorted(self.errors))
            raise ValidationError(f"invalid {names}", fields=dict(self.errors))
