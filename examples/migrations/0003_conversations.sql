-- Local conversations the agent automates, their links to remote pages, and renewal jobs.
CREATE TABLE local_conversations (
  local_conversation_id TEXT PRIMARY KEY NOT NULL,
  platform TEXT NOT NULL,
  automation_status TEXT NOT NULL DEFAULT 'active',
  last_non_paused_automation_status TEXT,
  pause_reason TEXT,
  last_error TEXT,
  execution_state TEXT NOT NULL DEFAULT 'idle',
  consecutive_failure_count INTEGER NOT NULL DEFAULT 0,
  repeated_message_count INTEGER NOT NULL DEFAULT 0,
  repeated_renewal_count INTEGER NOT NULL DEFAULT 0,
  last_message_fingerprint TEXT,
  last_renewal_fingerprint TEXT,
  title TEXT,
  summary TEXT,
  last_message_id TEXT,
  last_message_at INTEGER,
  cooldown_until INTEGER,
  paused_at INTEGER,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

CREATE TABLE conversation_links (
  link_id TEXT PRIMARY KEY NOT NULL,
  local_conversation_id TEXT NOT NULL
    REFERENCES local_conversations (local_conversation_id) ON DELETE CASCADE,
  platform TEXT NOT NULL,
  remote_conversation_id TEXT,
  client_id TEXT,
  page_url TEXT,
  page_title TEXT,
  route_path TEXT,
  route_pattern TEXT,
  route_params TEXT,
  target_kind TEXT,
  target_id TEXT,
  target_payload TEXT,
  is_active BOOLEAN NOT NULL DEFAULT 1,
  observed_at INTEGER,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

CREATE TABLE renewal_jobs (
  job_id TEXT PRIMARY KEY NOT NULL,
  local_conversation_id TEXT NOT NULL
    REFERENCES local_conversations (local_conversation_id) ON DELETE CASCADE,
  message_id TEXT,
  status TEXT NOT NULL DEFAULT 'pending',
  payload TEXT NOT NULL,
  payload_kind TEXT NOT NULL DEFAULT 'text',
  target_snapshot TEXT,
  attempt_count INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL DEFAULT 3,
  next_attempt_at INTEGER,
  last_attempt_at INTEGER,
  last_error TEXT,
  log_path TEXT,
  started_at INTEGER,
  finished_at INTEGER,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
