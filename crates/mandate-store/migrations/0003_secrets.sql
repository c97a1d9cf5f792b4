-- Mandate store, version 3: upstream credentials sealed under the master key ring.
CREATE TABLE secrets (
    name          TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL,
    sealed        TEXT NOT NULL,
    description   TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
