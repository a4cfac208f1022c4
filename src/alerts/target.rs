//! Alert targets at run time: the values of a parsed `[alerts.NAME]`
//! ([`TargetConfig`], parsed and checked in [`crate::config::alerts`]) with
//! their defaults, and the secrets they name.

use std::time::Duration;

pub use crate::config::alerts::{
    EmailSettings, Format, TargetConfig, TargetSettings, WebhookSettings,
};

impl TargetConfig {
    /// The webhook payload shape (`None` for email).
    pub fn format(&self) -> Option<Format> {
        match &self.settings {
            TargetSettings::Webhook(w) => Some(w.format),
            TargetSettings::Email(_) => None,
        }
    }

    /// The email keys, for an email target.
    pub fn email(&self) -> Result<&EmailSettings, String> {
        match &self.settings {
            TargetSettings::Email(e) => Ok(e),
            TargetSettings::Webhook(_) => Err("not an email target".into()),
        }
    }

    fn webhook(&self) -> Option<&WebhookSettings> {
        match &self.settings {
            TargetSettings::Webhook(w) => Some(w),
            TargetSettings::Email(_) => None,
        }
    }

    pub fn dead_letter_after(&self) -> Duration {
        self.common
            .dead_letter_after
            .unwrap_or(Duration::from_secs(24 * 3600))
    }

    pub fn timeout(&self) -> Duration {
        self.common.timeout.unwrap_or(Duration::from_secs(30))
    }

    pub fn repeat_interval(&self) -> Duration {
        self.webhook()
            .and_then(|w| w.repeat_interval)
            .unwrap_or(Duration::from_secs(60))
    }

    pub fn resolve_resend(&self) -> Duration {
        self.webhook()
            .and_then(|w| w.resolve_resend)
            .unwrap_or(Duration::from_secs(300))
    }

    pub fn retry_policy(&self) -> crate::http::RetryPolicy {
        crate::http::RetryPolicy {
            max_retries: u32::MAX,
            base: self
                .common
                .backoff_initial
                .unwrap_or(Duration::from_secs(1)),
            cap: self.common.backoff_max.unwrap_or(Duration::from_secs(300)),
            max_hint: self.common.backoff_max.unwrap_or(Duration::from_secs(300)),
        }
    }

    /// The URL, from `url`, `url_env` or `url_file`.
    pub fn url(&self) -> Result<String, String> {
        let c = &self.common;
        if let Some(u) = &c.url {
            return Ok(u.clone());
        }
        crate::config::read_secret(c.url_env.as_deref(), c.url_file.as_deref())?
            .ok_or_else(|| "no URL configured".to_string())
    }

    /// The signing secret's HMAC key (json webhooks), from its env var or file.
    pub fn signing_key(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(w) = self.webhook() else {
            return Ok(None);
        };
        let Some(secret) =
            crate::config::read_secret(w.secret_env.as_deref(), w.secret_file.as_deref())?
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
}

impl EmailSettings {
    /// The SMTP password, from its env var or file.
    pub fn password(&self) -> Result<Option<String>, String> {
        crate::config::read_secret(self.password_env.as_deref(), self.password_file.as_deref())
    }
}
