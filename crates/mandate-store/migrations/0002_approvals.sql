-- Mandate store, version 2: human approvers, approval requests, break-glass grants.
CREATE TABLE approvers (
    name           TEXT PRIMARY KEY,
    roles          TEXT NOT NULL,
    groups_json    TEXT NOT NULL,
    token_hash     TEXT NOT NULL UNIQUE,
    created_at_ms  BIGINT NOT NULL,
    disabled_at_ms BIGINT
);

-- A group's webhook secret signs its notifications (HMAC), so it is kept, not hashed.
CREATE TABLE approver_groups (
    name           TEXT PRIMARY KEY,
    webhook_url    TEXT,
    webhook_secret TEXT,
    updated_at_ms  BIGINT NOT NULL
);

CREATE TABLE approvals (
    id                TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,
    task_id           TEXT NOT NULL REFERENCES tasks(id),
    agent             TEXT NOT NULL REFERENCES agents(name),
    owner             TEXT NOT NULL,
    grp               TEXT NOT NULL,
    digest            TEXT NOT NULL,
    action_json       TEXT NOT NULL,
    bundle_version    TEXT NOT NULL,
    required          INTEGER NOT NULL,
    owner_may_approve INTEGER NOT NULL,
    votes             TEXT NOT NULL,
    state             TEXT NOT NULL,
    created_at_ms     BIGINT NOT NULL,
    expires_at_ms     BIGINT NOT NULL,
    decided_at_ms     BIGINT,
    decided_by        TEXT,
    reason            TEXT
);
CREATE INDEX approvals_by_state ON approvals (state, expires_at_ms);
CREATE INDEX approvals_by_task ON approvals (task_id, state);
CREATE INDEX approvals_by_agent ON approvals (agent, state);

CREATE TABLE break_glass (
    id             TEXT PRIMARY KEY,
    declared_by    TEXT NOT NULL,
    agent          TEXT NOT NULL REFERENCES agents(name),
    task_id        TEXT NOT NULL REFERENCES tasks(id),
    justification  TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL,
    reviewed_by    TEXT,
    reviewed_at_ms BIGINT,
    review_notes   TEXT
);
CREATE INDEX tasks_by_agent ON tasks (agent, created_at_ms);
