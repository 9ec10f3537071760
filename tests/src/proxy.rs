//! A loopback HTTP/1.1 proxy in front of the D1 peer that misbehaves on purpose: added
//! latency, a request budget answered with 429 beyond it (like D1's API), and random faults —
//! dropped connections, resets, stalls, slow answers, 5xx, 429, and answers lost after D1
//! committed. Deterministic for a seed. It only ever listens on and talks to 127.0.0.1.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One way to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Close the connection without answering.
    Drop,
    /// Reset the connection (RST) without answering.
    Reset,
    /// Answer nothing for this long (beyond a client's timeout), never forwarding.
    Stall(Duration),
    /// Forward, but answer this much later.
    Slow(Duration),
    /// HTTP 500 with D1's JSON error, not forwarded.
    Http500,
    /// HTTP 503 with an HTML body, not forwarded.
    Http503,
    /// HTTP 429 with `Retry-After: 1`, not forwarded.
    Http429,
    /// Forward (D1 commits), then answer HTTP 500: the answer is lost.
    LostAfterCommit,
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Fault::Drop => "drop",
            Fault::Reset => "reset",
            Fault::Stall(_) => "stall",
            Fault::Slow(_) => "slow",
            Fault::Http500 => "500",
            Fault::Http503 => "503",
            Fault::Http429 => "429",
            Fault::LostAfterCommit => "lost-after-commit",
        }
    }
}

/// How the proxy behaves.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Added to every forwarded request.
    pub latency: Duration,
    /// Requests per second allowed (a token bucket of one second); beyond it, 429.
    pub budget_per_sec: Option<f64>,
    /// Share of requests that meet a fault.
    pub fault_rate: f64,
    /// The faults, chosen uniformly.
    pub faults: Vec<Fault>,
    /// Seed of the fault rolls.
    pub seed: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            latency: Duration::ZERO,
            budget_per_sec: None,
            fault_rate: 0.0,
            faults: Vec::new(),
            seed: 1,
        }
    }
}

/// What the proxy counted.
#[derive(Debug, Clone, Default)]
pub struct ProxyStats {
    /// Requests received.
    pub requests: u64,
    /// Requests forwarded to the peer and answered with its answer.
    pub forwarded_ok: u64,
    /// Requests refused for the budget.
    pub over_budget: u64,
    /// Faults served, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// When each fault or refusal was served, since the proxy started.
    pub failure_times: Vec<Duration>,
}

struct State {
    config: ProxyConfig,
    rng: StdRng,
    tokens: f64,
    refilled: Instant,
    stats: ProxyStats,
    started: Instant,
}

/// A running proxy.
pub struct Proxy {
    /// `http://127.0.0.1:<port>`: use it as the D1 base URL.
    pub base_url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

enum Plan {
    Forward(Duration),
    Fault(Fault),
    OverBudget,
}

impl Proxy {
    /// Starts a proxy to `upstream` (the peer's base URL) on the current tokio runtime.
    pub async fn start(upstream: &str, config: ProxyConfig) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(Mutex::new(State {
            rng: StdRng::seed_from_u64(config.seed),
            tokens: config.budget_per_sec.unwrap_or(0.0),
            refilled: Instant::now(),
            config,
            stats: ProxyStats::default(),
            started: Instant::now(),
        }));
        let upstream = upstream.trim_end_matches('/').to_string();
        let client = reqwest::Client::new();
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, client, upstream) = (st.clone(), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, st, client, upstream).await;
                });
            }
        });
        Proxy {
            base_url: format!("http://{addr}"),
            state,
            task,
        }
    }

    /// Changes the fault rate (0 stops the faults).
    pub fn set_fault_rate(&self, rate: f64) {
        self.state.lock().unwrap().config.fault_rate = rate;
    }

    /// What it counted so far.
    pub fn stats(&self) -> ProxyStats {
        self.state.lock().unwrap().stats.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn plan(state: &Mutex<State>) -> Plan {
    let mut guard = state.lock().unwrap();
    let s = &mut *guard;
    s.stats.requests += 1;
    if let Some(budget) = s.config.budget_per_sec {
        let now = Instant::now();
        let refill = now.duration_since(s.refilled).as_secs_f64() * budget;
        s.tokens = (s.tokens + refill).min(budget);
        s.refilled = now;
        if s.tokens < 1.0 {
            s.stats.over_budget += 1;
            let t = s.started.elapsed();
            s.stats.failure_times.push(t);
            return Plan::OverBudget;
        }
        s.tokens -= 1.0;
    }
    let rate = s.config.fault_rate;
    if rate > 0.0 && !s.config.faults.is_empty() && s.rng.random_bool(rate.min(1.0)) {
        let i = s.rng.random_range(0..s.config.faults.len());
        let f = s.config.faults[i];
        *s.stats.faults.entry(f.name()).or_insert(0) += 1;
        if !matches!(f, Fault::Slow(_)) {
            let t = s.started.elapsed();
            s.stats.failure_times.push(t);
        }
        return Plan::Fault(f);
    }
    Plan::Forward(s.config.latency)
}

struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let start = head_end + 4;
    while buf.len() < start + len {
        let mut chunk = [0u8; 65536];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[start..start + len].to_vec();
    buf.drain(..start + len);
    Some(Request {
        path,
        headers,
        body,
    })
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    req: &Request,
) -> Option<(u16, Option<String>, String, Vec<u8>)> {
    let mut r = client
        .post(format!("{upstream}{}", req.path))
        .body(req.body.clone());
    for (k, v) in &req.headers {
        if k == "authorization" || k == "content-type" {
            r = r.header(k.as_str(), v.as_str());
        }
    }
    let resp = r.send().await.ok()?;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let body = resp.bytes().await.ok()?.to_vec();
    Some((status, retry, ct, body))
}

async fn serve(
    mut stream: TcpStream,
    state: Arc<Mutex<State>>,
    client: reqwest::Client,
    upstream: String,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf).await {
        let json = "application/json";
        match plan(&state) {
            Plan::OverBudget => {
                let body = br#"{"result":null,"success":false,"errors":[{"code":971,"message":"More than 1200 requests per 300 seconds reached."}],"messages":[]}"#;
                respond(&mut stream, 429, json, &[("retry-after", "1".into())], body).await?;
            }
            Plan::Fault(Fault::Drop) => return Ok(()),
            Plan::Fault(Fault::Reset) => {
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                return Ok(());
            }
            Plan::Fault(Fault::Stall(d)) => {
                tokio::time::sleep(d).await;
                return Ok(());
            }
            Plan::Fault(Fault::Http500) => {
                let body = br#"{"result":null,"success":false,"errors":[{"code":7500,"message":"internal error; reference = proxy"}],"messages":[]}"#;
                respond(&mut stream, 500, json, &[], body).await?;
            }
            Plan::Fault(Fault::Http503) => {
                respond(
                    &mut stream,
                    503,
                    "text/html",
                    &[],
                    b"<html><body>503 Service Temporarily Unavailable</body></html>",
                )
                .await?;
            }
            Plan::Fault(Fault::Http429) => {
                let body = br#"{"result":null,"success":false,"errors":[{"code":971,"message":"Too many requests"}],"messages":[]}"#;
                respond(&mut stream, 429, json, &[("retry-after", "1".into())], body).await?;
            }
            Plan::Fault(Fault::LostAfterCommit) => {
                let _ = forward(&client, &upstream, &req).await;
                let body = br#"{"result":null,"success":false,"errors":[{"code":7500,"message":"internal error; reference = lost"}],"messages":[]}"#;
                respond(&mut stream, 500, json, &[], body).await?;
            }
            plan @ (Plan::Forward(_) | Plan::Fault(Fault::Slow(_))) => {
                let delay = match plan {
                    Plan::Fault(Fault::Slow(d)) | Plan::Forward(d) => d,
                    _ => Duration::ZERO,
                };
                let answer = forward(&client, &upstream, &req).await;
                tokio::time::sleep(delay).await;
                match answer {
                    Some((status, retry, ct, body)) => {
                        let extra: Vec<(&str, String)> =
                            retry.map(|r| ("retry-after", r)).into_iter().collect();
                        if (200..300).contains(&status) {
                            state.lock().unwrap().stats.forwarded_ok += 1;
                        }
                        respond(&mut stream, status, &ct, &extra, &body).await?;
                    }
                    None => respond(&mut stream, 502, "text/plain", &[], b"bad gateway").await?,
                }
            }
        }
    }
    Ok(())
}
