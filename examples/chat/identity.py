"""Who is calling: the verified token's user, checked to be a chat user id (a UUID)."""

from __future__ import annotations

from dataclasses import dataclass

from examples.chat.validation import parse_uuid
from sdk import Context, ForbiddenError, UnauthorizedError

__all__ = ["User", "current_user"]


@dataclass(frozen=True, slots=True)
class User:
    id: str
    #: The token's name, else a stand-in made from the id.
    username: str


def current_user(ctx: Context) -> User:
    """The caller; ``UNAUTHORIZED`` without a token, ``FORBIDDEN`` when its subject is
    not a UUID (chat user ids are)."""
    user = ctx.user
    if user is None:
        raise UnauthorizedError()
    user_id = parse_uuid(user.id)
    if user_id is None:
        raise ForbiddenError("the token's subject must be a UUID to use the chat")
    return User(id=user_id, username=user.username or f"user-{user_id[:8]}")
