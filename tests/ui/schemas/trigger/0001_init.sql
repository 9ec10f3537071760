CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT);
-- The audit table this trigger writes to was never created: D1 refuses every insert.
CREATE TRIGGER items_audit AFTER INSERT ON items BEGIN
  INSERT INTO audit (item_id) VALUES (new.id);
END;
