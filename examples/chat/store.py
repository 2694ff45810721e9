"""ChatStore: every query the chat service runs, returning JSON-ready dicts.

Ids leave as strings and times as ISO 8601 strings, the shapes clients see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict
from uuid import UUID

__all__ = ["ChatStore", "Membership", "Page", "Room"]


class Room(TypedDict):
    id: str
    name: str
    description: str | None
    type: str
    createdBy: str | None
    createdAt: str


class Message(TypedDict):
    id: str
    roomId: str
    userId: str | None
    username: str | None
    content: str
    messageType: str
    metadata: Any
    createdAt: str


@dataclass(frozen=True, slots=True)
class Membership:
    role: str
    joined_at: datetime


@dataclass(frozen=True, slots=True)
class Page:
    """One page of history, oldest first."""

    messages: list[Message]
    has_more: bool


def _iso(value: datetime) -> str:
    return value.isoformat()


def _str(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def _room(row: Any) -> Room:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "description": row["description"],
        "type": row["type"],
        "createdBy": _str(row["created_by"]),
        "createdAt": _iso(row["created_at"]),
    }


def _message(row: Any) -> Message:
    return {
        "id": str(row["id"]),
        "roomId": str(row["room_id"]),
        "userId": _str(row["user_id"]),
        "username": row["username"],
        "content": row["content"],
        "messageType": row["message_type"],
        "metadata": row["metadata"],
        "createdAt": _iso(row["created_at"]),
    }


_ROOM_COLUMNS = "r.id, r.name, r.description, r.type, r.created_by, r.created_at"
_MESSAGE_SELECT = """
SELECT m.id, m.room_id, m.user_id, u.username, m.content, m.message_type, m.metadata,
       m.created_at
FROM chat_messages m LEFT JOIN users u ON u.id = m.user_id
"""


class ChatStore:
    """The queries, over an asyncpg pool (``service.db``)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    # ------------------------------------------------------------------ users
    async def ensure_user(self, user_id: str, username: str | None) -> str:
        """Create the user on first sight (a token for a new id); returns the username."""
        name = (username or f"user-{user_id[:8]}")[:100]
        row = await self.pool.fetchrow(
            """
            INSERT INTO users (id, username) VALUES ($1, $2)
            ON CONFLICT (id) DO UPDATE SET username = users.username
            RETURNING username
            """,
            UUID(user_id),
            name,
        )
        return str(row["username"])

    async def users(self, ids: list[str]) -> list[dict[str, str]]:
        """``{id, username}`` of these users, in id order (unknown ids are skipped)."""
        rows = await self.pool.fetch(
            "SELECT id, username FROM users WHERE id = ANY($1::uuid[]) ORDER BY id",
            [UUID(i) for i in ids],
        )
        return [{"id": str(r["id"]), "username": r["username"]} for r in rows]

    # ------------------------------------------------------------------ rooms
    async def room(self, room_id: str) -> Room | None:
        row = await self.pool.fetchrow(
            f"SELECT {_ROOM_COLUMNS} FROM rooms r WHERE r.id = $1", UUID(room_id)
        )
        return None if row is None else _room(row)

    async def membership(self, room_id: str, user_id: str) -> Membership | None:
        row = await self.pool.fetchrow(
            "SELECT role, joined_at FROM room_members WHERE room_id = $1 AND user_id = $2",
            UUID(room_id),
            UUID(user_id),
        )
        return None if row is None else Membership(row["role"], row["joined_at"])

    async def member_count(self, room_id: str) -> int:
        count = await self.pool.fetchval(
            "SELECT count(*) FROM room_members WHERE room_id = $1", UUID(room_id)
        )
        return int(count)

    async def members(self, room_id: str) -> list[dict[str, Any]]:
        """``{userId, username, role, joinedAt}`` of a room's members, owners first."""
        rows = await self.pool.fetch(
            """
            SELECT rm.user_id, u.username, rm.role, rm.joined_at
            FROM room_members rm JOIN users u ON u.id = rm.user_id
            WHERE rm.room_id = $1
            ORDER BY rm.role = 'owner' DESC, rm.role = 'admin' DESC, u.username
            """,
            UUID(room_id),
        )
        return [
            {
                "userId": str(r["user_id"]),
                "username": r["username"],
                "role": r["role"],
                "joinedAt": _iso(r["joined_at"]),
            }
            for r in rows
        ]

    async def room_ids_of(self, user_id: str) -> list[str]:
        """The ids of the rooms ``user_id`` is a member of."""
        rows = await self.pool.fetch(
            "SELECT room_id FROM room_members WHERE user_id = $1 ORDER BY room_id",
            UUID(user_id),
        )
        return [str(r["room_id"]) for r in rows]

    async def rooms_of(self, user_id: str) -> list[dict[str, Any]]:
        """The user's rooms with their role, joinedAt and memberCount, by name."""
        rows = await self.pool.fetch(
            f"""
            SELECT {_ROOM_COLUMNS}, rm.role, rm.joined_at,
                   (SELECT count(*) FROM room_members c WHERE c.room_id = r.id) AS member_count
            FROM room_members rm JOIN rooms r ON r.id = rm.room_id
            WHERE rm.user_id = $1
            ORDER BY r.name, r.id
            """,
            UUID(user_id),
        )
        return [
            {
                **_room(r),
                "role": r["role"],
                "joinedAt": _iso(r["joined_at"]),
                "memberCount": int(r["member_count"]),
            }
            for r in rows
        ]

    async def rooms_by_id(self, room_ids: list[str]) -> list[Room]:
        rows = await self.pool.fetch(
            f"SELECT {_ROOM_COLUMNS} FROM rooms r WHERE r.id = ANY($1::uuid[]) ORDER BY r.name",
            [UUID(i) for i in room_ids],
        )
        return [_room(r) for r in rows]

    async def create_room(
        self, *, name: str, description: str | None, type: str, owner: str
    ) -> Room:
        """Create a room whose owner is ``owner``, in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""
                INSERT INTO rooms AS r (name, description, type, created_by)
                VALUES ($1, $2, $3, $4)
                RETURNING {_ROOM_COLUMNS}
                """,
                name,
                description,
                type,
                UUID(owner),
            )
            await conn.execute(
                "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, 'owner')",
                row["id"],
                UUID(owner),
            )
        return _room(row)

    # --------------------------------------------------------------- messages
    async def add_message(
        self, *, room_id: str, user_id: str, content: str, message_type: str, metadata: Any
    ) -> Message:
        row = await self.pool.fetchrow(
            """
            WITH m AS (
                INSERT INTO chat_messages (room_id, user_id, content, message_type, metadata)
                VALUES ($1, $2, $3, $4, $5)
                RETURNING *
            )
            SELECT m.*, u.username FROM m LEFT JOIN users u ON u.id = m.user_id
            """,
            UUID(room_id),
            UUID(user_id),
            content,
            message_type,
            metadata,
        )
        return _message(row)

    async def history(self, room_id: str, *, limit: int, before: str | None) -> Page | None:
        """Up to ``limit`` messages older than message ``before`` (or the newest).

        Returns None when ``before`` is not a message of this room.
        """
        args: list[Any] = [UUID(room_id), limit + 1]
        cursor = ""
        if before is not None:
            found = await self.pool.fetchval(
                "SELECT true FROM chat_messages WHERE id = $1 AND room_id = $2",
                UUID(before),
                UUID(room_id),
            )
            if not found:
                return None
            args.append(UUID(before))
            cursor = (
                "AND (m.created_at, m.id) < "
                "(SELECT created_at, id FROM chat_messages WHERE id = $3)"
            )
        rows = await self.pool.fetch(
            f"""
            {_MESSAGE_SELECT}
            WHERE m.room_id = $1 {cursor}
            ORDER BY m.created_at DESC, m.id DESC
            LIMIT $2
            """,
            *args,
        )
        has_more = len(rows) > limit
        newest_first = [_message(r) for r in rows[:limit]]
        return Page(messages=newest_first[::-1], has_more=has_more)
