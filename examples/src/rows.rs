//! Row structs of the seed's seven tables, checked against `migrations/` at compile time.

use d1_sync::D1Sync;

/// A message observed by the agent.
#[derive(Debug, Clone, PartialEq, D1Sync)]
#[d1(table = "messages", schema = "migrations")]
pub struct Message {
    #[d1(primary_key)]
    pub id: String,
    pub platform: String,
    pub conversation_id: Option<String>,
    pub role: String,
    pub raw_text: Option<String>,
    pub summary: Option<String>,
    pub observed_at: i64,
    pub static_path: Option<String>,
    pub page_url: Option<String>,
    pub page_title: Option<String>,
    #[d1(insert_only)]
    pub created_at: i64,
    pub organization_id: Option<String>,
}

/// A tool execution an instruction led to.
#[derive(Debug, Clone, PartialEq, D1Sync)]
#[d1(table = "executions", schema = "migrations")]
pub struct Execution {
    #[d1(primary_key)]
    pub instruction_id: String,
    pub message_id: Option<String>,
    pub target: String,
    pub tool: String,
    pub params: Option<String>,
    pub params_kind: Option<String>,
    pub result_ok: Option<bool>,
    pub result_data: Option<String>,
    pub result_summary: Option<String>,
    pub result_error: Option<String>,
    pub http_status: Option<i64>,
    pub executed_at: i64,
    pub static_path: Option<String>,
    #[d1(insert_only)]
    pub created_at: i64,
}

/// A browsing session.
#[derive(Debug, Clone, PartialEq, D1Sync)]
#[d1(table = "sessions", schema = "migrations")]
pub struct Session {
    #[d1(primary_key)]
    pub id: String,
    pub platform: String,
    pub conversation_id: Option<String>,
    pub started_at: i64,
    pub last_activity_at: i64,
    pub message_count: i64,
    pub execution_count: i64,
    pub summary: Option<String>,
    pub static_path: Option<String>,
    #[d1(insert_only)]
    pub created_at: i64,
}

/// A conversation the agent automates.
#[derive(Debug, Clone, PartialEq, D1Sync)]
#[d1(table = "local_conversations", schema = "migrations")]
pub struct LocalConversation {
    #[d1(primary_key)]
    pub local_conversation_id: String,
    pub platform: String,
    pub automation_status: String,
    pub last_non_paused_automation_status: Option<String>,
    pub pause_reason: Option<String>,
    pub last_error: Option<String>,
    pub execution_state: String,
    pub consecutive_failure_count: i64,
    pub repeated_message_count: i64,
    pub repeated_renewal_count: i64,
    pub last_message_fingerprint: Option<String>,
    pub last_renewal_fingerprint: Option<String>,
    pub title: Option<String>,
    pub summary: Option<String>,
    pub last_message_id: Option<String>,
    pub last_message_at: Option<i64>,
    pub cooldown_until: Option<i64>,
    pub paused_at: Option<i64>,
    #[d1(insert_only)]
    pub created_at: i64,
    pub updated_at: i64,
}

/// A link from a local conversation to a remote page.
#[derive(Debug, Clone, PartialEq, D1Sync)]
#[d1(table = "conversation_links", schema = "migrations")]
pub struct ConversationLink {
    #[d1(primary_key)]
    pub link_id: String,
    pub local_conversation_id: String,
    pub platform: String,
    pub remote_conversation_id: Option<String>,
    pub client_id: Option<String>,
    pub page_url: Option<String>,
    pub page_title: Option<String>,
    pub route_path: Option<String>,
    pub route_pattern: Option<String>,
    pub route_params: Option<String>,
    pub target_kind: Option<String>,
    pub target_id: Option<String>,
    pub target_payload: Option<String>,
    pub is_active: bool,
    pub observed_at: Option<i64>,
    #[d1(insert_only)]
    pub created_at: i64,
    pub updated_at: i64,
}

/// A scheduled renewal of a conversation.
#[derive(Debug, Clone, PartialEq, D1Sync)]
#[d1(table = "renewal_jobs", schema = "migrations")]
pub struct RenewalJob {
    #[d1(primary_key)]
    pub job_id: String,
    pub local_conversation_id: String,
    pub message_id: Option<String>,
    pub status: String,
    pub payload: String,
    pub payload_kind: String,
    pub target_snapshot: Option<String>,
    pub attempt_count: i64,
    pub max_attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub log_path: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    #[d1(insert_only)]
    pub created_at: i64,
    pub updated_at: i64,
}

/// A key/value of the browser request policy.
#[derive(Debug, Clone, PartialEq, D1Sync)]
#[d1(table = "browser_request_policy_state", schema = "migrations")]
pub struct BrowserRequestPolicyState {
    #[d1(primary_key)]
    pub state_key: String,
    pub value_json: String,
    pub updated_at: i64,
}
