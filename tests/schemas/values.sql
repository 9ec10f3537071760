-- `v` has no declared type: SQLite keeps every value's storage class as given.
CREATE TABLE vals (id INTEGER PRIMARY KEY, note TEXT, v);
CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT);
