CREATE TABLE customers (
  id TEXT PRIMARY KEY NOT NULL,
  email TEXT NOT NULL,
  name TEXT,
  visits INTEGER NOT NULL DEFAULT 0,
  email_domain TEXT GENERATED ALWAYS AS (substr(email, instr(email, '@') + 1)) VIRTUAL,
  created_at INTEGER NOT NULL
);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  customer_id TEXT NOT NULL REFERENCES customers (id),
  total_cents INTEGER NOT NULL,
  note TEXT
);
