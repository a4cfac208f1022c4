//! Webhook targets (reqwest).
//!
//! - `format = "json"`: our schema ([`super::render::json_payload`]) signed
//!   per Standard Webhooks: `webhook-id` is the alert id (the same on every
//!   retry, so receivers can drop a copy), `webhook-timestamp` the Unix time
//!   of the attempt, `webhook-signature` `v1,` + base64 HMAC-SHA256 over
//!   `{id}.{timestamp}.{body}` keyed with the base64-decoded `whsec_` secret.
//! - `format = "slack"`: an incoming-webhook message; success is 200 `ok`.
//! - `format = "alertmanager"`: `url` is the Alertmanager's base URL; alerts
//!   are POSTed to `{url}/api/v2/alerts` (see the outbox for repeats).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::http::{transport_reason, Disposition, RetryPolicy};

/// Why an attempt failed, and whether the server asked for a delay.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    pub hint: Option<Duration>,
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Checks a Standard Webhooks delivery: one of the space-separated `v1`
/// signatures must match (compared in constant time) and the timestamp must
/// be within `tolerance` of `now`.
pub fn verify(
    key: &[u8],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), &'static str> {
    let ts: u64 = timestamp.parse().map_err(|_| "bad timestamp")?;
    if ts.abs_diff(now) > tolerance.as_secs() {
        return Err("timestamp outside the tolerance");
    }
    for sig in signatures.split(' ') {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        let Ok(given) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            continue;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        if mac.verify_slice(&given).is_ok() {
            return Ok(());
        }
    }
    Err("no matching signature")
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// POSTs `body` as JSON; `signed` adds the Standard Webhooks headers.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    signed: Option<(&[u8], &str)>,
    timeout: Duration,
    slack: bool,
) -> Result<(), SendError> {
    let mut req = client
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("safedrift/", env!("CARGO_PKG_VERSION")),
        );
    if let Some((key, id)) = signed {
        let ts = unix_now();
        req = req
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(key, id, ts, &body));
    }
    let resp = req.body(body).send().await.map_err(|e| SendError {
        message: transport_reason(&e.without_url()),
        hint: None,
    })?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() {
        if slack && text.trim() != "ok" && !text.trim().is_empty() {
            return Err(SendError {
                message: format!("Slack answered {status} with {:?}", truncate(&text)),
                hint: None,
            });
        }
        return Ok(());
    }
    let hint = match RetryPolicy::default().classify(status, &headers, &text) {
        Disposition::Retry { hint, .. } => hint,
        Disposition::Fatal { .. } => None,
    };
    Err(SendError {
        message: format!("HTTP {status}: {}", truncate(&text)),
        hint,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let key = b"0123456789abcdef0123456789abcdef";
        let sig = sign(key, "a_1", 1_700_000_000, b"{\"x\":1}");
        let tol = Duration::from_secs(300);
        assert!(verify(
            key,
            "a_1",
            "1700000000",
            &sig,
            b"{\"x\":1}",
            1_700_000_010,
            tol
        )
        .is_ok());
        // Another signature first (key rotation) still verifies.
        let both = format!("v1,AAAA {sig}");
        assert!(verify(
            key,
            "a_1",
            "1700000000",
            &both,
            b"{\"x\":1}",
            1_700_000_010,
            tol
        )
        .is_ok());
        assert!(verify(
            key,
            "a_1",
            "1700000000",
            &sig,
            b"{\"x\":2}",
            1_700_000_010,
            tol
        )
        .is_err());
        assert!(verify(
            key,
            "a_2",
            "1700000000",
            &sig,
            b"{\"x\":1}",
            1_700_000_010,
            tol
        )
        .is_err());
        assert!(verify(
            key,
            "a_1",
            "1700000000",
            &sig,
            b"{\"x\":1}",
            1_700_000_400,
            tol
        )
        .is_err());
        assert!(verify(
            b"other",
            "a_1",
            "1700000000",
            &sig,
            b"{\"x\":1}",
            1_700_000_010,
            tol
        )
        .is_err());
    }

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks reference libraries' tests.
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
