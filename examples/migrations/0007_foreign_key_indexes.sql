-- Every foreign key gets an index on its child columns. Without one, deleting a parent row
-- makes SQLite (and so D1) scan the whole child table for rows to cascade, null or refuse:
-- one full scan per deleted conversation or message, locally and in D1 alike.
CREATE INDEX conversation_links_conversation ON conversation_links (local_conversation_id);
CREATE INDEX renewal_jobs_conversation ON renewal_jobs (local_conversation_id);
CREATE INDEX executions_message ON executions (message_id);
