-- A task's history (R5) as durable state: written in the same transaction as the event that
-- changed it, read back at start-up in time proportional to live tasks (not events).
-- `rev` orders snapshots of one task: a later one never loses to an earlier one.
CREATE TABLE task_history (
    task_id TEXT PRIMARY KEY REFERENCES tasks (id),
    rev BIGINT NOT NULL,
    data TEXT NOT NULL
);
