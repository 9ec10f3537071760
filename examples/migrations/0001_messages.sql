-- Messages observed by the agent, and the tool executions they led to.
CREATE TABLE messages (
  id TEXT PRIMARY KEY NOT NULL,
  platform TEXT NOT NULL,
  conversation_id TEXT,
  role TEXT NOT NULL,
  raw_text TEXT,
  summary TEXT,
  observed_at INTEGER NOT NULL,
  static_path TEXT,
  page_url TEXT,
  page_title TEXT,
  created_at INTEGER NOT NULL
);
CREATE INDEX messages_conversation ON messages (conversation_id, observed_at);

CREATE TABLE executions (
  instruction_id TEXT PRIMARY KEY NOT NULL,
  message_id TEXT REFERENCES messages (id) ON DELETE SET NULL,
  target TEXT NOT NULL,
  tool TEXT NOT NULL,
  params TEXT,
  params_kind TEXT,
  result_ok BOOLEAN,
  result_data TEXT,
  result_summary TEXT,
  result_error TEXT,
  http_status INTEGER,
  executed_at INTEGER NOT NULL,
  static_path TEXT,
  created_at INTEGER NOT NULL
);
