CREATE TABLE ledger (
  entry_id INTEGER PRIMARY KEY,
  account TEXT NOT NULL,
  amount INTEGER NOT NULL,
  rate REAL
) STRICT;
