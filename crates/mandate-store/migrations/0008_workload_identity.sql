-- Workload identity (R1): a token from an external issuer that carries a `jti` attests at
-- most once. Rows live until the token expires; expired rows are purged on each use.
CREATE TABLE used_assertions (
    source        TEXT NOT NULL,
    jti           TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (source, jti)
);
CREATE INDEX used_assertions_expiry ON used_assertions (expires_at_ms);

-- Sender-constrained tasks (S2): the thumbprint of the key a task's tokens are bound to
-- (RFC 9449 `cnf.jkt`), so a token re-issued on activation stays bound to it.
ALTER TABLE tasks ADD COLUMN cnf_jkt TEXT;
