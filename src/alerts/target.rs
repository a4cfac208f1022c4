//! Alert targets at run time: the values of a parsed `[alerts.NAME]`
//! ([`TargetConfig`], parsed and checked in [`crate::config::alerts`]) with
//! their defaults, and the secrets they name.

use std::time::Duration;

pub use crate::config::alerts::{Format, TargetConfig};

impl TargetConfig {
    pub fn format(&self) -> Format {
        match self.format.as_deref() {
            Some("slack") => Format::Slack,
            Some("alertmanager") => Format::Alertmanager,
            _ => Format::Json,
        }
    }

    pub fn dead_letter_after(&self) -> Duration {
        self.dead_letter_after
            .unwrap_or(Duration::from_secs(24 * 3600))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs(30))
    }

    pub fn repeat_interval(&self) -> Duration {
        self.repeat_interval.unwrap_or(Duration::from_secs(60))
    }

    pub fn resolve_resend(&self) -> Duration {
        self.resolve_resend.unwrap_or(Duration::from_secs(300))
    }

    pub fn retry_policy(&self) -> crate::http::RetryPolicy {
        crate::http::RetryPolicy {
            max_retries: u32::MAX,
            base: self.backoff_initial.unwrap_or(Duration::from_secs(1)),
            cap: self.backoff_max.unwrap_or(Duration::from_secs(300)),
            max_hint: self.backoff_max.unwrap_or(Duration::from_secs(300)),
        }
    }

    /// The URL, from `url`, `url_env` or `url_file`.
    pub fn url(&self) -> Result<String, String> {
        if let Some(u) = &self.url {
            return Ok(u.clone());
        }
        crate::config::read_secret(self.url_env.as_deref(), self.url_file.as_deref())?
            .ok_or_else(|| "no URL configured".to_string())
    }

    /// The signing secret's HMAC key (json webhooks), from its env var or file.
    pub fn signing_key(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(secret) =
            crate::config::read_secret(self.secret_env.as_deref(), self.secret_file.as_deref())?
        else {
            return Ok(None);
        };
        let b64 = secret.strip_prefix("whsec_").unwrap_or(&secret);
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Some)
            .map_err(|_| {
                "the webhook secret is not `whsec_` followed by base64 (the secret itself is not shown)"
                    .to_string()
            })
    }

    /// The SMTP password, from its env var or file.
    pub fn password(&self) -> Result<Option<String>, String> {
        crate::config::read_secret(self.password_env.as_deref(), self.password_file.as_deref())
    }
}
