"""Fixtures of the chat tests: one database and one engine with chat workers per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chat.support import admin_url, chat_engine, scratch_database
from tests.helpers.proc import EngineProcess


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    """A Postgres we may create databases on (local server, else embedded)."""
    with admin_url() as url:
        yield url


@pytest.fixture(scope="module")
def database_url(pg_admin: str) -> Iterator[str]:
    """A fresh database for this module, dropped after it."""
    with scratch_database(pg_admin) as url:
        yield url


@pytest.fixture(scope="module")
def chat(database_url: str) -> Iterator[EngineProcess]:
    """An engine with two chat workers on this module's database, in demo mode."""
    with chat_engine(database_url) as eng:
        yield eng
