-- A later migration: ALTER TABLE is applied like D1 applies it.
ALTER TABLE messages ADD COLUMN organization_id TEXT;
