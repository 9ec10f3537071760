//! Turning a D1 REST response into success or a [`TargetError`]: a pure function, so every
//! case is unit-tested.

use std::time::Duration;

use serde::Deserialize;

use super::TargetError;

#[derive(Deserialize)]
struct Envelope {
    success: Option<bool>,
    #[serde(default)]
    errors: Vec<ApiError>,
    result: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ApiError {
    code: Option<i64>,
    message: Option<String>,
}

const AUTH_CODES: &[i64] = &[6003, 6111, 9106, 9109, 10000, 10001];

fn messages(errors: &[ApiError]) -> String {
    let all: Vec<String> = errors
        .iter()
        .map(|e| match (&e.code, &e.message) {
            (Some(c), Some(m)) => format!("{m} (code {c})"),
            (None, Some(m)) => m.clone(),
            (Some(c), None) => format!("code {c}"),
            (None, None) => "no message".to_string(),
        })
        .collect();
    if all.is_empty() {
        "no error message".to_string()
    } else {
        all.join("; ")
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Classifies one response to a request of `statements` statements: `Ok` only for a 2xx with
/// `success: true` and one successful result per statement.
///
/// ```
/// use d1_sync::target::{classify_response, TargetError};
/// let ok = br#"{"success":true,"errors":[],"result":[{"success":true},{"success":true}]}"#;
/// assert_eq!(classify_response(200, None, ok, 2), Ok(()));
/// let sql = br#"{"success":false,"errors":[{"code":7500,"message":"UNIQUE constraint failed: t.email: SQLITE_CONSTRAINT"}]}"#;
/// assert!(matches!(classify_response(400, None, sql, 2), Err(TargetError::Rejected(_))));
/// assert!(matches!(classify_response(503, None, b"<html>", 2), Err(TargetError::Transient(_))));
/// ```
pub fn classify_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    statements: usize,
) -> Result<(), TargetError> {
    let envelope: Option<Envelope> = serde_json::from_slice(body).ok();
    let described = || match &envelope {
        Some(e) => messages(&e.errors),
        None => format!("HTTP {status}, body: {}", snippet(body)),
    };
    match status {
        200..=299 => {
            let Some(env) = envelope else {
                return Err(TargetError::Transient(format!(
                    "HTTP {status} with a body that is not D1's JSON: {}",
                    snippet(body)
                )));
            };
            if env.success != Some(true) {
                return Err(TargetError::Transient(format!(
                    "HTTP {status} but success is not true: {}",
                    messages(&env.errors)
                )));
            }
            let results = env.result.as_ref().and_then(|r| r.as_array());
            let Some(results) = results else {
                return Err(TargetError::Transient(format!(
                    "HTTP {status} without a result list"
                )));
            };
            if results.len() != statements {
                return Err(TargetError::Transient(format!(
                    "D1 answered {} results for {statements} statements",
                    results.len()
                )));
            }
            if let Some(i) = results
                .iter()
                .position(|r| r.get("success").and_then(|s| s.as_bool()) == Some(false))
            {
                return Err(TargetError::Transient(format!(
                    "statement {i} reported success: false"
                )));
            }
            Ok(())
        }
        429 => Err(TargetError::RateLimited {
            retry_after,
            message: described(),
        }),
        401 | 403 => Err(TargetError::Auth {
            status,
            message: described(),
        }),
        400 | 413 => {
            let codes: Vec<i64> = envelope
                .as_ref()
                .map(|e| e.errors.iter().filter_map(|e| e.code).collect())
                .unwrap_or_default();
            if codes.iter().any(|c| AUTH_CODES.contains(c)) {
                Err(TargetError::Auth {
                    status,
                    message: described(),
                })
            } else if status == 413 {
                Err(TargetError::TooLarge(described()))
            } else if codes.contains(&7500) {
                Err(TargetError::Rejected(described()))
            } else {
                Err(TargetError::Config {
                    status,
                    message: described(),
                })
            }
        }
        408 | 500..=599 => Err(TargetError::Transient(format!(
            "HTTP {status}: {}",
            described()
        ))),
        _ => Err(TargetError::Config {
            status,
            message: described(),
        }),
    }
}

/// Parses a `Retry-After` header: delay-seconds (the form Cloudflare sends).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    v.parse::<u64>().ok().map(Duration::from_secs).or_else(|| {
        v.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(Duration::from_secs_f64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_needs_one_result_per_statement() {
        let two = br#"{"success":true,"errors":[],"messages":[],"result":[{"results":[],"success":true,"meta":{}},{"success":true}]}"#;
        assert_eq!(classify_response(200, None, two, 2), Ok(()));
        assert!(
            matches!(classify_response(200, None, two, 3), Err(TargetError::Transient(m)) if m.contains("2 results for 3"))
        );
        let failed_stmt = br#"{"success":true,"result":[{"success":false}]}"#;
        assert!(matches!(
            classify_response(200, None, failed_stmt, 1),
            Err(TargetError::Transient(_))
        ));
        let not_ok = br#"{"success":false,"errors":[{"code":1,"message":"x"}],"result":[]}"#;
        assert!(matches!(
            classify_response(200, None, not_ok, 0),
            Err(TargetError::Transient(_))
        ));
        assert!(matches!(
            classify_response(200, None, b"not json", 1),
            Err(TargetError::Transient(_))
        ));
        assert!(matches!(
            classify_response(200, None, br#"{"success":true}"#, 1),
            Err(TargetError::Transient(_))
        ));
    }

    #[test]
    fn sql_errors_are_rejections_with_d1s_message() {
        let body = br#"{"result":[],"success":false,"errors":[{"code":7500,"message":"UNIQUE constraint failed: items.email: SQLITE_CONSTRAINT (extended: SQLITE_CONSTRAINT_UNIQUE)"}],"messages":[]}"#;
        match classify_response(400, None, body, 2) {
            Err(TargetError::Rejected(m)) => assert!(
                m.starts_with("UNIQUE constraint failed: items.email"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_response(413, None, b"too big", 2),
            Err(TargetError::TooLarge(m)) if m.contains("HTTP 413")
        ));
    }

    #[test]
    fn auth_rate_limit_config_and_server_errors() {
        let auth =
            br#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"}]}"#;
        assert!(matches!(
            classify_response(403, None, auth, 1),
            Err(TargetError::Auth { status: 403, .. })
        ));
        let header =
            br#"{"success":false,"errors":[{"code":6003,"message":"Invalid request headers"}]}"#;
        assert!(matches!(
            classify_response(400, None, header, 1),
            Err(TargetError::Auth { status: 400, .. })
        ));
        let limited = classify_response(429, Some(Duration::from_secs(7)), b"{}", 1);
        assert!(
            matches!(limited, Err(TargetError::RateLimited { retry_after: Some(d), .. }) if d == Duration::from_secs(7))
        );
        let missing = br#"{"success":false,"errors":[{"code":7404,"message":"The database x could not be found"}]}"#;
        assert!(matches!(
            classify_response(404, None, missing, 1),
            Err(TargetError::Config { status: 404, .. })
        ));
        assert!(matches!(
            classify_response(400, None, br#"{"errors":[{"code":7400}]}"#, 1),
            Err(TargetError::Config { .. })
        ));
        let internal = br#"{"success":false,"errors":[{"code":7500,"message":"internal error"}]}"#;
        assert!(
            matches!(
                classify_response(500, None, internal, 1),
                Err(TargetError::Transient(_))
            ),
            "500 with 7500 is not an SQL error"
        );
        assert!(
            matches!(classify_response(504, None, b"<html>Gateway Timeout</html>", 1), Err(TargetError::Transient(m)) if m.contains("Gateway Timeout"))
        );
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("5"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after(" 1.5 "),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
