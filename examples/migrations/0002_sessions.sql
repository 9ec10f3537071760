CREATE TABLE sessions (
  id TEXT PRIMARY KEY NOT NULL,
  platform TEXT NOT NULL,
  conversation_id TEXT,
  started_at INTEGER NOT NULL,
  last_activity_at INTEGER NOT NULL,
  message_count INTEGER NOT NULL DEFAULT 0,
  execution_count INTEGER NOT NULL DEFAULT 0,
  summary TEXT,
  static_path TEXT,
  created_at INTEGER NOT NULL
);
