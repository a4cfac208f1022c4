//! The one retry policy for everything safedrift sends over HTTP.
//!
//! What is retried: connection errors, timeouts, unreadable bodies, 408, 409,
//! 429 (unless it says the quota is exhausted) and 5xx. A server's own hint
//! wins: `x-should-retry`, then `retry-after-ms`, then `retry-after` (seconds or
//! an HTTP date), capped at [`RetryPolicy::max_hint`]. Otherwise the delay is
//! exponential (`base * 2^attempt`, capped at [`RetryPolicy::cap`]) with ±25%
//! jitter, the scheme of OpenAI's own client. Everything else (400, 401, 403,
//! 404, `insufficient_quota`) fails at once: retrying cannot fix it.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// How persistently to retry.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff delay.
    pub base: Duration,
    /// Longest computed backoff delay.
    pub cap: Duration,
    /// Longest delay a server may ask for with `retry-after`.
    pub max_hint: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 6,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
            max_hint: Duration::from_secs(120),
        }
    }
}

/// What to do after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Try again, after the server's hint if it gave one.
    Retry {
        hint: Option<Duration>,
        reason: String,
    },
    /// Give up now: `kind` is a short label, `message` says what to fix.
    Fatal { kind: &'static str, message: String },
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        if let Some(hint) = hint {
            return hint.min(self.max_hint);
        }
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.cap);
        let jitter = rand::thread_rng().gen_range(0.75..=1.25);
        exp.mul_f64(jitter)
    }

    /// Classifies a non-success HTTP answer. `body` is the error body, used to
    /// tell a rate limit from an exhausted quota and to explain fatal errors.
    pub fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &str) -> Disposition {
        let detail = error_message(body);
        let hint = retry_hint(headers);
        let code = error_code(body);
        if code.as_deref() == Some("insufficient_quota") {
            return Disposition::Fatal {
                kind: "insufficient_quota",
                message: format!("the account has no quota left (HTTP {status}): {detail}"),
            };
        }
        match headers.get("x-should-retry").and_then(|v| v.to_str().ok()) {
            Some("true") => {
                return Disposition::Retry {
                    hint,
                    reason: format!("HTTP {status}"),
                }
            }
            Some("false") => {
                return Disposition::Fatal {
                    kind: "rejected",
                    message: format!("HTTP {status}: {detail}"),
                }
            }
            _ => {}
        }
        match status.as_u16() {
            408 | 409 | 429 | 500..=599 => Disposition::Retry {
                hint,
                reason: format!("HTTP {status}"),
            },
            401 | 403 => Disposition::Fatal {
                kind: "unauthorized",
                message: format!(
                    "the server refused the credentials (HTTP {status}); check the API key variable or file: {detail}"
                ),
            },
            404 => Disposition::Fatal {
                kind: "not_found",
                message: format!("not found (HTTP 404): {detail}"),
            },
            _ => Disposition::Fatal {
                kind: "bad_request",
                message: format!("HTTP {status}: {detail}"),
            },
        }
    }
}

/// Whether a transport error is worth retrying (all of them are: timeouts,
/// refused and reset connections, bodies cut short).
pub fn transport_reason(err: &reqwest::Error) -> String {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_body() || err.is_decode() {
        "the response body was cut short or unreadable"
    } else {
        "request failed"
    };
    // reqwest's Display includes the URL, which never carries secrets here.
    format!("{what}: {err}")
}

/// The server's retry hint: `retry-after-ms`, else `retry-after` in seconds or
/// as an HTTP date.
pub fn retry_hint(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if let Ok(d) = Duration::try_from_secs_f64(ms / 1000.0) {
            return Some(d);
        }
    }
    let value = get("retry-after")?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        // Absurd values (negative, NaN, beyond Duration) are ignored.
        return Duration::try_from_secs_f64(secs).ok();
    }
    let when = httpdate_parse(value)?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

fn httpdate_parse(value: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc2822(value)
        .ok()
        .map(SystemTime::from)
}

/// `error.message` from an OpenAI-style error body, or a short excerpt.
pub fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    if let Some(msg) = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message").or_else(|| v.get("message")))
        .and_then(|m| m.as_str())
    {
        return msg.chars().take(300).collect();
    }
    let excerpt: String = body.chars().take(200).collect();
    if excerpt.trim().is_empty() {
        "(empty body)".to_string()
    } else {
        excerpt
    }
}

fn error_code(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let err = v.get("error")?;
    ["code", "type"]
        .iter()
        .filter_map(|k| err.get(*k).and_then(|c| c.as_str()))
        .find(|c| *c == "insufficient_quota")
        .map(str::to_string)
}

/// Sends one request and reads the whole answer: its status, headers and
/// body, or why no answer came (a transport error, in words, without the
/// URL) — which [`RetryPolicy`] retries.
pub async fn send_once(
    request: reqwest::RequestBuilder,
) -> Result<(StatusCode, HeaderMap, String), String> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_reason(&e.without_url()))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .text()
        .await
        .map_err(|e| transport_reason(&e.without_url()))?;
    Ok((status, headers, body))
}

/// A watcher's `timeout` setting (`key` names it in messages): a positive
/// duration like "30s", `default` when unset. A bad value is added to
/// `problems` and `default` returned, so every problem of a config is told
/// at once.
pub fn timeout_setting(
    value: Option<&str>,
    default: Duration,
    key: &str,
    problems: &mut Vec<String>,
) -> Duration {
    let Some(text) = value else {
        return default;
    };
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            problems.push(format!("{key}: must be longer than zero"));
            default
        }
        Err(e) => {
            problems.push(format!(
                "{key}: {text:?} is not a duration like \"{}\": {e}",
                humantime::format_duration(default)
            ));
            default
        }
    }
}

/// The HTTP client a watcher talks to its registry with: safedrift's user
/// agent, and `timeout` to connect and between reads. There is no overall
/// limit on the client (artifact downloads may be large); API requests set
/// their own.
pub fn watcher_client(watcher: &str, timeout: Duration) -> Result<reqwest::Client, Vec<String>> {
    reqwest::Client::builder()
        .user_agent(concat!("safedrift/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .build()
        .map_err(|e| {
            vec![format!(
                "`watchers.{watcher}`: cannot build an HTTP client: {e}"
            )]
        })
}

/// One JSON GET of a registry's API under a [`RetryPolicy`], shared by the
/// watchers that poll one.
pub struct JsonGet<'a> {
    pub http: &'a reqwest::Client,
    pub url: &'a str,
    pub query: &'a [(String, String)],
    /// Sent as `Authorization: Bearer`, and redacted from every error
    /// (servers may echo it back).
    pub bearer: Option<&'a str>,
    pub timeout: Duration,
    /// The watcher's name, for the retry log.
    pub watcher: &'a str,
    /// Where the key comes from (" (key from $VAR)"), added to an
    /// `unauthorized` error.
    pub key_source: String,
}

impl JsonGet<'_> {
    /// GETs and parses the JSON; transient failures are retried with
    /// `policy`, errors name the URL and never the key.
    pub async fn send<T: serde::de::DeserializeOwned>(
        &self,
        policy: &RetryPolicy,
    ) -> Result<T, crate::WatchError> {
        let url = self.url;
        let redact = |text: String| match self.bearer {
            Some(k) => text.replace(k, "[redacted]"),
            None => text,
        };
        let mut attempt = 0;
        loop {
            let mut request = self.http.get(url).query(self.query).timeout(self.timeout);
            if let Some(key) = self.bearer {
                request = request.bearer_auth(key);
            }
            let mut transport = true;
            let disposition = match send_once(request).await {
                Err(reason) => Disposition::Retry { hint: None, reason },
                Ok((status, _, body)) if status.is_success() => {
                    return serde_json::from_str(&body).map_err(|e| {
                        crate::WatchError::new(
                            "malformed",
                            format!("{url}: unexpected answer: {e}"),
                        )
                    })
                }
                Ok((status, headers, body)) => {
                    transport = false;
                    policy.classify(status, &headers, &body)
                }
            };
            match disposition {
                Disposition::Fatal { kind, message } => {
                    let source = if kind == "unauthorized" {
                        self.key_source.as_str()
                    } else {
                        ""
                    };
                    return Err(crate::WatchError::new(
                        kind,
                        redact(format!("{url}: {message}{source}")),
                    ));
                }
                Disposition::Retry { hint, reason } => {
                    if attempt >= policy.max_retries {
                        return Err(crate::WatchError::new(
                            if transport { "unreachable" } else { "http" },
                            redact(format!(
                                "{url}: gave up after {} attempts: {reason}",
                                attempt + 1
                            )),
                        ));
                    }
                    let delay = policy.delay(attempt, hint);
                    tracing::debug!(watcher = %self.watcher, %url, %reason, ?delay, attempt, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn timeouts_are_positive_durations_and_bad_ones_are_named() {
        let mut problems = Vec::new();
        let default = Duration::from_secs(30);
        assert_eq!(
            timeout_setting(None, default, "`k`", &mut problems),
            default
        );
        assert_eq!(
            timeout_setting(Some("1m 5s"), default, "`k`", &mut problems),
            Duration::from_secs(65)
        );
        assert!(problems.is_empty());
        assert_eq!(
            timeout_setting(Some("0s"), default, "`k`", &mut problems),
            default
        );
        assert_eq!(
            timeout_setting(Some("soon"), default, "`k`", &mut problems),
            default
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0], "`k`: must be longer than zero");
        assert!(
            problems[1].starts_with("`k`: \"soon\" is not a duration like \"30s\""),
            "{problems:?}"
        );
    }

    #[test]
    fn rate_limits_are_retried_with_the_hint() {
        let p = RetryPolicy::default();
        let body = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        let d = p.classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "2")]),
            body,
        );
        assert_eq!(
            d,
            Disposition::Retry {
                hint: Some(Duration::from_secs(2)),
                reason: "HTTP 429 Too Many Requests".into()
            }
        );
        let h = headers(&[("retry-after-ms", "150"), ("retry-after", "9")]);
        assert_eq!(retry_hint(&h), Some(Duration::from_millis(150)));
    }

    #[test]
    fn quota_auth_and_missing_models_fail_fast() {
        let p = RetryPolicy::default();
        let quota = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let d = p.classify(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), quota);
        assert!(matches!(
            d,
            Disposition::Fatal {
                kind: "insufficient_quota",
                ..
            }
        ));
        let d = p.classify(StatusCode::UNAUTHORIZED, &HeaderMap::new(), "{}");
        assert!(matches!(
            d,
            Disposition::Fatal {
                kind: "unauthorized",
                ..
            }
        ));
        let nf = r#"{"error":{"message":"The model `x` does not exist","code":"model_not_found"}}"#;
        let d = p.classify(StatusCode::NOT_FOUND, &HeaderMap::new(), nf);
        match d {
            Disposition::Fatal { kind, message } => {
                assert_eq!(kind, "not_found");
                assert!(message.contains("model `x` does not exist"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_errors_and_should_retry() {
        let p = RetryPolicy::default();
        assert!(matches!(
            p.classify(StatusCode::BAD_GATEWAY, &HeaderMap::new(), ""),
            Disposition::Retry { hint: None, .. }
        ));
        let h = headers(&[("x-should-retry", "false")]);
        assert!(matches!(
            p.classify(StatusCode::SERVICE_UNAVAILABLE, &h, ""),
            Disposition::Fatal { .. }
        ));
        let h = headers(&[("x-should-retry", "true")]);
        assert!(matches!(
            p.classify(StatusCode::BAD_REQUEST, &h, ""),
            Disposition::Retry { .. }
        ));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        for attempt in 0..20 {
            let d = p.delay(attempt, None);
            let nominal = (0.5 * 2f64.powi(attempt.min(16) as i32)).min(8.0);
            assert!(d.as_secs_f64() >= nominal * 0.75 - 1e-9, "{attempt}: {d:?}");
            assert!(d.as_secs_f64() <= nominal * 1.25 + 1e-9, "{attempt}: {d:?}");
        }
        assert_eq!(p.delay(0, Some(Duration::from_secs(600))), p.max_hint);
    }

    #[test]
    fn absurd_hints_are_ignored_not_fatal() {
        for v in ["99999999999999999999", "-5", "NaN", "inf"] {
            assert_eq!(retry_hint(&headers(&[("retry-after", v)])), None, "{v}");
        }
        for v in ["1e30", "-5", "NaN", "inf"] {
            assert_eq!(retry_hint(&headers(&[("retry-after-ms", v)])), None, "{v}");
        }
        // Huge but representable: capped by the policy.
        let p = RetryPolicy::default();
        let hint = retry_hint(&headers(&[("retry-after-ms", "99999999999999999999")]));
        assert_eq!(p.delay(0, hint), p.max_hint);
    }

    #[test]
    fn http_date_hints() {
        let future = chrono::Utc::now() + chrono::Duration::seconds(30);
        let h = headers(&[("retry-after", &future.to_rfc2822())]);
        let d = retry_hint(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }
}
