"""The seed data (migration 2, so it loads once): three users and three rooms."""

from __future__ import annotations

from typing import Final

__all__ = ["ALICE", "BOB", "CHARLIE", "GENERAL", "PRIVATE", "RANDOM", "SEED_SQL", "SEED_USERS"]

ALICE: Final = "11111111-1111-1111-1111-111111111111"
BOB: Final = "22222222-2222-2222-2222-222222222222"
CHARLIE: Final = "33333333-3333-3333-3333-333333333333"
GENERAL: Final = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
RANDOM: Final = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"
PRIVATE: Final = "cccccccc-cccc-cccc-cccc-cccccccccccc"

#: ``(id, username)`` of the seeded users, the ones demo mode offers.
SEED_USERS: Final = ((ALICE, "Alice"), (BOB, "Bob"), (CHARLIE, "Charlie"))

SEED_SQL: Final = f"""
INSERT INTO users (id, username) VALUES
    ('{ALICE}', 'Alice'), ('{BOB}', 'Bob'), ('{CHARLIE}', 'Charlie')
ON CONFLICT DO NOTHING;

INSERT INTO rooms (id, name, description, type, created_by) VALUES
    ('{GENERAL}', 'General', 'General discussion', 'public', '{ALICE}'),
    ('{RANDOM}', 'Random', 'Off-topic conversations', 'public', '{ALICE}'),
    ('{PRIVATE}', 'Private Room', 'Members only', 'private', '{ALICE}')
ON CONFLICT DO NOTHING;

INSERT INTO room_members (room_id, user_id, role) VALUES
    ('{GENERAL}', '{ALICE}', 'owner'),
    ('{GENERAL}', '{BOB}', 'member'),
    ('{GENERAL}', '{CHARLIE}', 'member'),
    ('{RANDOM}', '{ALICE}', 'owner'),
    ('{RANDOM}', '{BOB}', 'member'),
    ('{PRIVATE}', '{ALICE}', 'owner'),
    ('{PRIVATE}', '{BOB}', 'member')
ON CONFLICT DO NOTHING;
"""
