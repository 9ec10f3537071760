//! [`D1Http`]: D1's REST API over reqwest with rustls.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::classify::{classify_response, parse_retry_after};
use super::{
    Applied, Batch, BoxFuture, PackLimits, Param, RequestBudget, Statement, Target, TargetError,
};
use crate::backoff::Backoff;
use crate::error::Error;
use crate::ledger;
use crate::row::TableDef;

/// Where and how to reach a D1 database.
#[derive(Clone)]
pub struct D1Config {
    /// Cloudflare account id.
    pub account_id: String,
    /// D1 database id (a UUID).
    pub database_id: String,
    /// API token with D1 write permission. Never printed.
    pub api_token: String,
    /// API base URL; `https://api.cloudflare.com` in production, a local D1 in tests.
    pub base_url: String,
    /// Whole-request timeout (default 35 s). Keep it above D1's own 30 s limit: a request
    /// given up on earlier might still run on D1 after its retry and newer changes, and
    /// overwrite them.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// At most this many requests per window (default 1,000 per 5 minutes: D1 allows 1,200
    /// per 5 minutes per token and blocks the token for 5 minutes beyond); `None` for none.
    pub request_budget: Option<(usize, Duration)>,
}

impl fmt::Debug for D1Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("D1Config")
            .field("account_id", &self.account_id)
            .field("database_id", &self.database_id)
            .field("api_token", &"<redacted>")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl D1Config {
    /// The production API.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.cloudflare.com";

    /// A config with the default base URL and timeouts (35 s, connect 10 s).
    pub fn new(
        account_id: impl Into<String>,
        database_id: impl Into<String>,
        api_token: impl Into<String>,
    ) -> D1Config {
        D1Config {
            account_id: account_id.into(),
            database_id: database_id.into(),
            api_token: api_token.into(),
            base_url: Self::DEFAULT_BASE_URL.to_string(),
            timeout: Duration::from_secs(35),
            connect_timeout: Duration::from_secs(10),
            request_budget: Some((1_000, Duration::from_secs(300))),
        }
    }

    /// From `CLOUDFLARE_ACCOUNT_ID`, `CLOUDFLARE_API_TOKEN`, `D1_DATABASE_ID` and, if set,
    /// `D1_BASE_URL`. The error names every variable that is missing.
    pub fn from_env() -> Result<D1Config, Error> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let (a, t, d) = (
            get("CLOUDFLARE_ACCOUNT_ID"),
            get("CLOUDFLARE_API_TOKEN"),
            get("D1_DATABASE_ID"),
        );
        match (a, t, d) {
            (Some(a), Some(t), Some(d)) => {
                let mut c = D1Config::new(a, d, t);
                if let Some(base) = get("D1_BASE_URL") {
                    c.base_url = base;
                }
                Ok(c)
            }
            (a, t, d) => {
                let missing: Vec<&str> = [
                    (a.is_none(), "CLOUDFLARE_ACCOUNT_ID"),
                    (t.is_none(), "CLOUDFLARE_API_TOKEN"),
                    (d.is_none(), "D1_DATABASE_ID"),
                ]
                .into_iter()
                .filter_map(|(m, k)| m.then_some(k))
                .collect();
                Err(Error::Config(format!(
                    "D1 target: set {} (and D1_BASE_URL for a local D1)",
                    missing.join(", ")
                )))
            }
        }
    }

    /// The `/query` endpoint.
    pub fn query_url(&self) -> String {
        format!(
            "{}/client/v4/accounts/{}/d1/database/{}/query",
            self.base_url.trim_end_matches('/'),
            self.account_id,
            self.database_id
        )
    }
}

/// D1 over its REST API: `POST .../query` with `{"batch": [...]}`, one reqwest client reused
/// for keep-alive, explicit timeouts. A request counts as applied only when D1 says success
/// and returns one result per statement (see [`classify_response`]).
pub struct D1Http {
    client: reqwest::Client,
    url: String,
    auth: String,
    config: D1Config,
    limits: PackLimits,
    budget: Option<tokio::sync::Mutex<RequestBudget>>,
    /// Whether this client has made sure the ledger exists in the database.
    ledger_ready: std::sync::atomic::AtomicBool,
    /// Held while the ledger is made: a request arriving meanwhile waits instead of making it
    /// a second time.
    ledger_setup: tokio::sync::Mutex<()>,
}

impl fmt::Debug for D1Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("D1Http")
            .field("config", &self.config)
            .finish()
    }
}

#[derive(Serialize)]
struct Body<'a> {
    batch: Vec<Query<'a>>,
}

#[derive(Serialize)]
struct Query<'a> {
    sql: &'a str,
    params: &'a [Param],
}

impl D1Http {
    /// A client for `config`.
    pub fn new(config: D1Config) -> Result<D1Http, Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("d1-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        let budget = config
            .request_budget
            .map(|(max, window)| tokio::sync::Mutex::new(RequestBudget::new(max, window)));
        Ok(D1Http {
            budget,
            url: config.query_url(),
            auth: format!("Bearer {}", config.api_token),
            client,
            config,
            limits: PackLimits::default(),
            ledger_ready: std::sync::atomic::AtomicBool::new(false),
            ledger_setup: tokio::sync::Mutex::new(()),
        })
    }

    /// Replaces the packing limits.
    pub fn with_limits(mut self, limits: PackLimits) -> D1Http {
        self.limits = limits;
        self
    }

    /// The config (its `Debug` hides the token).
    pub fn config(&self) -> &D1Config {
        &self.config
    }

    /// Sends one raw batch and returns D1's JSON `result` list. For set-up and inspection
    /// (creating tables, reading rows back), not for syncing.
    pub async fn query(
        &self,
        statements: &[Statement],
    ) -> Result<Vec<serde_json::Value>, TargetError> {
        let (status, retry_after, body) = self.post(statements).await?;
        classify_response(status, retry_after, &body, statements.len())?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| TargetError::Transient(e.to_string()))?;
        Ok(v.get("result")
            .and_then(|r| r.as_array())
            .cloned()
            .unwrap_or_default())
    }

    /// [`D1Http::query`] for set-up statements (creating tables, migrations): transient
    /// failures and rate limits are retried with backoff (0.2 s doubling to 5 s, at least
    /// `Retry-After`) for up to `retry_for`; any other error is returned at once. Only for
    /// statements that are harmless to run twice (a lost answer may hide a commit), such as
    /// `CREATE TABLE IF NOT EXISTS`.
    pub async fn query_retrying(
        &self,
        statements: &[Statement],
        retry_for: Duration,
    ) -> Result<Vec<serde_json::Value>, TargetError> {
        let backoff = Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            floor: Duration::from_millis(50),
        };
        let deadline = tokio::time::Instant::now() + retry_for;
        let mut attempt = 0u32;
        loop {
            let err = match self.query(statements).await {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let retry_after = match &err {
                TargetError::Transient(_) => None,
                TargetError::RateLimited { retry_after, .. } => *retry_after,
                _ => return Err(err),
            };
            attempt = attempt.saturating_add(1);
            let delay = backoff.delay(attempt, &mut rand::rng(), retry_after);
            if tokio::time::Instant::now() + delay > deadline {
                return Err(err);
            }
            tracing::warn!(error = %err, delay_ms = delay.as_millis() as u64, "D1 set-up request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Creates the ledger (see [`crate::ledger`]) unless this client already did, once
    /// however many ask at the same time.
    async fn ensure_ledger(&self) -> Result<(), TargetError> {
        use std::sync::atomic::Ordering;
        if self.ledger_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = self.ledger_setup.lock().await;
        if self.ledger_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.query(&ledger::create_statements()).await?;
        self.ledger_ready.store(true, Ordering::Release);
        Ok(())
    }

    async fn post(
        &self,
        statements: &[Statement],
    ) -> Result<(u16, Option<Duration>, Vec<u8>), TargetError> {
        if let Some(budget) = &self.budget {
            loop {
                let wait = budget.lock().await.reserve(std::time::Instant::now());
                match wait {
                    None => break,
                    Some(d) => {
                        tracing::debug!(
                            wait_ms = d.as_millis() as u64,
                            "keeping under the D1 request budget"
                        );
                        tokio::time::sleep(d).await;
                    }
                }
            }
        }
        let body = Body {
            batch: statements
                .iter()
                .map(|s| Query {
                    sql: &s.sql,
                    params: &s.params,
                })
                .collect(),
        };
        let resp = self
            .client
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(encode_body(&body, statements)?)
            .send()
            .await
            .map_err(|e| TargetError::Transient(describe_reqwest(&e)))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = resp.bytes().await.map_err(|e| {
            TargetError::Transient(format!("reading the response: {}", describe_reqwest(&e)))
        })?;
        Ok((status, retry_after, bytes.to_vec()))
    }
}

/// The request body as JSON, in a buffer sized up front: the JSON parameters run to hundreds
/// of kilobytes, and growing a buffer by doubling copies them several times over.
fn encode_body(body: &Body<'_>, statements: &[Statement]) -> Result<Vec<u8>, TargetError> {
    let estimate: usize = statements
        .iter()
        .map(|s| {
            let params: usize = s
                .params
                .iter()
                .map(|p| match p {
                    // Quotes inside the JSON text come out escaped: leave room for some.
                    Param::Text(t) => t.len() + t.len() / 8 + 2,
                    Param::Real(_) => 24,
                })
                .sum();
            s.sql.len() + s.sql.len() / 16 + params + 32
        })
        .sum();
    let mut buf = Vec::with_capacity(estimate + 16);
    // Strings and numbers into a Vec: serde_json has no error to give here, but if it ever
    // did, the request is not sent and the batch waits, uncharged.
    serde_json::to_writer(&mut buf, body)
        .map_err(|e| TargetError::Transient(format!("encoding the request: {e}")))?;
    Ok(buf)
}

/// The text values of `column` in the rows of the first statement of a [`D1Http::query`]
/// answer (rows without a text value there are left out).
pub fn result_column(result: &[serde_json::Value], column: &str) -> Vec<String> {
    result
        .first()
        .and_then(|r| r.get("results"))
        .and_then(|r| r.as_array())
        .map(|rows| {
            rows.iter()
                .filter_map(|row| row.get(column)?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The records the version guard refused, read from the result rows of the batch's checks in
/// D1's answer (already classified as a success).
fn superseded(batch: &Batch<'_>, body: &[u8]) -> Vec<super::Superseded> {
    if batch.checks.is_empty() {
        return Vec::new();
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        result: Vec<Results>,
    }
    #[derive(serde::Deserialize)]
    struct Results {
        #[serde(default)]
        results: Vec<Row>,
    }
    #[derive(serde::Deserialize)]
    struct Row {
        i: i64,
        v: Option<String>,
    }
    let answer = match serde_json::from_slice::<Answer>(body) {
        Ok(answer) => answer,
        Err(e) => {
            // The request was applied; only which of its rows were stale is unknown, and
            // those are acknowledged as applied (they changed nothing in D1).
            tracing::warn!(error = %e, "could not read the version checks in D1's answer");
            return Vec::new();
        }
    };
    batch
        .checks
        .iter()
        .flat_map(|check| {
            let rows = answer
                .result
                .get(check.statement)
                .map(|r| {
                    r.results
                        .iter()
                        .map(|row| (row.i, row.v.as_deref().and_then(|v| v.parse().ok())))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            batch.superseded(check, rows)
        })
        .collect()
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    // reqwest's Display includes the URL, which holds ids but no secret.
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "HTTP error"
    };
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

impl Target for D1Http {
    /// Makes the ledger (and with it the connection to D1) while the worker reads its first
    /// batch: one round trip, and over the internet a TLS handshake, off the first request's
    /// path.
    fn prepare<'a>(&'a self) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(self.ensure_ledger())
    }

    fn execute<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async move {
            self.ensure_ledger().await?;
            let (status, retry_after, body) = self.post(batch.statements).await?;
            match classify_response(status, retry_after, &body, batch.statements.len()) {
                Err(TargetError::Rejected(m)) if ledger::is_missing(&m) => {
                    // Dropped by hand, or the database was reset: made again before the retry.
                    self.ledger_ready
                        .store(false, std::sync::atomic::Ordering::Release);
                    Err(TargetError::Transient(m))
                }
                answer => ledger::outcome(answer.map(|()| superseded(&batch, &body))),
            }
        })
    }

    fn limits(&self) -> PackLimits {
        self.limits
    }

    fn describe(&self) -> String {
        format!(
            "D1 database {} at {}",
            self.config.database_id, self.config.base_url
        )
    }

    fn applied_migrations<'a>(
        &'a self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, TargetError>> {
        Box::pin(async move {
            let sql = d1_sync_schema::migrations::applied_sql(table);
            match self.query(&[Statement::new(sql)]).await {
                Ok(result) => Ok(Some(result_column(&result, "name"))),
                Err(TargetError::Rejected(m)) if m.contains("no such table") => {
                    Ok(Some(Vec::new()))
                }
                Err(e) => Err(e),
            }
        })
    }

    fn deleted<'a>(
        &'a self,
        table: &'a TableDef,
        row_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, TargetError>> {
        Box::pin(async move {
            let pk: Vec<&str> = table.primary_key.iter().map(String::as_str).collect();
            let s = Statement {
                sql: d1_sync_schema::guard::deleted_sql(&table.name, &pk),
                params: vec![Param::Text(row_key.to_string())],
            };
            match self.query(&[s]).await {
                Ok(result) => Ok(result_column(&result, "deleted")
                    .first()
                    .and_then(|v| v.parse().ok())),
                Err(TargetError::Rejected(m)) if m.contains("no such table") => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn dump<'a>(
        &'a self,
        table: &'a TableDef,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, TargetError>> {
        Box::pin(async move { crate::verify::dump_d1(self, table).await.map(Some) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug() {
        let c = D1Config::new("acct", "db", "s3cr3t-token");
        let t = D1Http::new(c.clone()).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert!(!t.describe().contains("s3cr3t"));
        assert_eq!(
            c.query_url(),
            "https://api.cloudflare.com/client/v4/accounts/acct/d1/database/db/query"
        );
    }
}
