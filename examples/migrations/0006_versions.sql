-- The app runs on several devices (a laptop and a desktop) that write one D1. Every row carries
-- the version of its last write, stamped by d1_sync::Hlc: D1 takes a write only over an older
-- version, so a device coming back online never overwrites newer edits made elsewhere.
ALTER TABLE messages ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE local_conversations ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversation_links ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE renewal_jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE browser_request_policy_state ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
