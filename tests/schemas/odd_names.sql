-- Names that only work when every identifier is quoted.
CREATE TABLE "select" (
  "order" INTEGER PRIMARY KEY,
  "my column" TEXT,
  "say ""hi""" TEXT,
  "created at" INTEGER NOT NULL
);
CREATE TABLE memberships (
  org_id TEXT NOT NULL,
  user_id INTEGER NOT NULL,
  role TEXT NOT NULL,
  joined_at INTEGER NOT NULL,
  PRIMARY KEY (org_id, user_id)
);
