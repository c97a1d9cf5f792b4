-- Mandate store, version 1: settings, signing keys, agents, join tokens, tasks, audit chain.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE signing_keys (
    kid           TEXT PRIMARY KEY,
    pkcs8         BLOB NOT NULL,
    created_at_ms BIGINT NOT NULL,
    retired_at_ms BIGINT
);

CREATE TABLE agents (
    name          TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    tier          INTEGER NOT NULL,
    status        TEXT NOT NULL,
    attestation   TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE join_tokens (
    token_hash    TEXT PRIMARY KEY,
    agent         TEXT NOT NULL REFERENCES agents(name),
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms    BIGINT
);

CREATE TABLE tasks (
    id             TEXT PRIMARY KEY,
    agent          TEXT NOT NULL REFERENCES agents(name),
    purpose        TEXT NOT NULL,
    requested      TEXT NOT NULL,
    grant_json     TEXT NOT NULL,
    items          TEXT NOT NULL,
    state          TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    token_jti      TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL,
    ended_at_ms    BIGINT,
    end_reason     TEXT
);
CREATE INDEX tasks_by_agent_state ON tasks (agent, state);
CREATE INDEX tasks_by_state ON tasks (state);

CREATE TABLE audit_events (
    seq       BIGINT PRIMARY KEY,
    ts_ms     BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    agent     TEXT,
    task_id   TEXT,
    data      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_events_by_task ON audit_events (task_id, seq);

-- The chain's head, rewritten in the same transaction as every append: truncating the
-- tail of audit_events without it is detected by verification.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
