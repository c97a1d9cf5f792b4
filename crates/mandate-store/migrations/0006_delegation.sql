-- Delegation (R8): a task delegated by another names its parent, and carries where it sits
-- in its chain (depth, root, every link) as JSON. Cascading ends walk `parent_id`.
ALTER TABLE tasks ADD COLUMN parent_id TEXT REFERENCES tasks (id);
ALTER TABLE tasks ADD COLUMN delegation TEXT;
CREATE INDEX tasks_by_parent ON tasks (parent_id);
