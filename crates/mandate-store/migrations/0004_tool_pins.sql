-- Mandate store, version 4: pinned MCP tool definitions (rug-pull defence).
CREATE TABLE tool_pins (
    server          TEXT NOT NULL,
    tool            TEXT NOT NULL,
    digest          TEXT NOT NULL,
    approved_digest TEXT,
    definition      TEXT NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    decided_by      TEXT,
    updated_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (server, tool)
);
