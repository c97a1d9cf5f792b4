-- Containment (R9): a task a containment rule stepped up needs a human for every further
-- write, delete or execute. Durable, so a restart does not relax it.
ALTER TABLE tasks ADD COLUMN step_up INTEGER NOT NULL DEFAULT 0;
