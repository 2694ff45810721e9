-- The chat data model (migration 1). Ids are UUIDs made by Postgres.

CREATE TABLE users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Display names come from tokens: two users may share one.
    username    text NOT NULL CHECK (char_length(username) BETWEEN 1 AND 100),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rooms (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    description text CHECK (char_length(description) <= 500),
    type        text NOT NULL DEFAULT 'public' CHECK (type IN ('public', 'private', 'direct')),
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE room_members (
    room_id     uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    joined_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
-- "The rooms of a user" (connect, GET /chat/rooms, presence); the primary key serves
-- "the members of a room".
CREATE INDEX room_members_user_idx ON room_members (user_id);

CREATE TABLE chat_messages (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    room_id      uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id      uuid REFERENCES users (id) ON DELETE SET NULL,
    content      text NOT NULL CHECK (char_length(content) BETWEEN 1 AND 4000),
    message_type text NOT NULL DEFAULT 'text'
                 CHECK (message_type IN ('text', 'image', 'file', 'system')),
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- clock_timestamp(), not now(): two messages of one transaction still get an order.
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- History: the newest messages of a room before a cursor, (created_at, id) descending.
CREATE INDEX chat_messages_room_history_idx ON chat_messages (room_id, created_at DESC, id DESC);

CREATE TABLE read_receipts (
    message_id  uuid NOT NULL REFERENCES chat_messages (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    read_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, user_id)
);
CREATE INDEX read_receipts_user_idx ON read_receipts (user_id);
