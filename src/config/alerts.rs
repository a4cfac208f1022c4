//! The `[alerts.NAME]` tables: parsed with the key path in every error and
//! checked as a whole, like the rest of the config.
//!
//! Both kinds share the routing and delivery keys:
//! - `watchers = ["acme-hf"]`: only checkpoints found by these watchers (exact
//!   names; default: all).
//! - `models = ["acme/*-sft", "ollama:llama3*"]`: only candidates whose model
//!   SPEC (e.g. `huggingface:acme/llama-sft`, or that SPEC with its `@revision`)
//!   or bare model name matches one of these globs (`*`, `?`, `[a-z]`; a name
//!   without them matches exactly; default: all).
//! - `min_severity = "warning"`: `info` (default), `warning` or `critical`.
//! - `dead_letter_after = "24h"`: give up on an alert this long after it was
//!   created (default 24h); `backoff_initial` (1s) and `backoff_max` (5m) bound
//!   the exponential backoff (with ±25% jitter) between attempts;
//!   `timeout` (30s) bounds one attempt.
//! - `include_responses = false`: put up to five harmful model answers in the
//!   message (off by default: answers to harmful prompts can be harmful).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use safedrift_watchers::parse_table;

/// How alerts are grouped (`[alerting]`).
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// Drifted checkpoints of one lineage decided within this time of the
    /// first become one message, sent when the window closes (default 1m;
    /// "0s" sends each at once).
    #[serde(default, with = "humantime_serde")]
    pub group_window: Option<Duration>,
}

/// The alert target kinds, as `kind = "..."` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    Email,
    Webhook,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Email => "email",
            AlertKind::Webhook => "webhook",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The values of `min_severity` (the alerts' severities, lowest first).
pub const SEVERITIES: &[&str] = &["info", "warning", "critical"];

/// One `[alerts.NAME]` table, parsed and checked.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    pub common: Common,
    pub settings: TargetSettings,
}

/// The keys both target kinds share: where the target is, which alerts it
/// takes and how they are delivered.
#[derive(Clone, Debug, Deserialize)]
pub struct Common {
    pub kind: AlertKind,
    /// SMTP server (`smtp://host:port`, `smtp://host:port?tls=required`,
    /// `smtps://host:port`) or webhook URL ...
    pub url: Option<String>,
    /// ... or the environment variable or file holding it, for URLs that
    /// are themselves secrets (a Slack incoming webhook's URL).
    pub url_env: Option<String>,
    pub url_file: Option<PathBuf>,
    // --- routing
    #[serde(default)]
    pub watchers: Vec<String>,
    #[serde(default)]
    pub models: Vec<String>,
    pub min_severity: Option<String>,
    #[serde(default)]
    pub include_responses: bool,
    // --- delivery
    #[serde(default, with = "humantime_serde")]
    pub dead_letter_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// The kind's keys as written, handed to [`TargetSettings`] (empty after).
    #[serde(flatten)]
    rest: toml::Table,
}

/// The keys of one target kind.
#[derive(Clone, Debug)]
pub enum TargetSettings {
    Email(EmailSettings),
    Webhook(WebhookSettings),
}

/// `kind = "email"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    /// SMTP user (else the user part of `url`).
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// PEM file of a CA to trust (besides the public roots) for an SMTP
    /// server with a private certificate (TLS URLs only).
    pub ca_file: Option<PathBuf>,
}

/// `kind = "webhook"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// `json` (default), `slack` or `alertmanager`.
    #[serde(default)]
    pub format: Format,
    /// `whsec_...` signing secret for `format = "json"` (required for it).
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// Alertmanager: how often a firing alert is sent again (default 1m).
    #[serde(default, with = "humantime_serde")]
    pub repeat_interval: Option<Duration>,
    /// Alertmanager: how long a resolved alert keeps being sent (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub resolve_resend: Option<Duration>,
}

/// Webhook payload shapes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Slack,
    Alertmanager,
}

impl TargetSettings {
    pub fn kind(&self) -> AlertKind {
        match self {
            TargetSettings::Email(_) => AlertKind::Email,
            TargetSettings::Webhook(_) => AlertKind::Webhook,
        }
    }
}

impl TargetConfig {
    /// Parses `[alerts.NAME]`; every problem names its key.
    pub fn parse(name: &str, table: toml::Table) -> Result<TargetConfig, Vec<String>> {
        let path = format!("alerts.{name}");
        let mut common: Common = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let at = e.path().to_string();
                let msg = e.into_inner().message().trim().to_string();
                if at.is_empty() || at == "." {
                    vec![format!("`{path}`: {msg}")]
                } else {
                    vec![format!("`{path}.{at}`: {msg}")]
                }
            })?;
        let rest = std::mem::take(&mut common.rest);
        let mut p = common.check(name);
        let settings = match common.kind {
            AlertKind::Email => {
                let (s, problems) = parse_table(&path, rest);
                p.extend(other_kinds_keys::<WebhookSettings>(problems, "webhook"));
                s.map(TargetSettings::Email)
            }
            AlertKind::Webhook => {
                let (s, problems) = parse_table(&path, rest);
                p.extend(other_kinds_keys::<EmailSettings>(problems, "email"));
                s.map(TargetSettings::Webhook)
            }
        };
        match &settings {
            Some(TargetSettings::Email(e)) => e.check(name, &common, &mut p),
            Some(TargetSettings::Webhook(w)) => w.check(name, &common, &mut p),
            None => {}
        }
        match settings {
            Some(settings) if p.is_empty() => Ok(TargetConfig { common, settings }),
            _ => Err(p),
        }
    }
}

/// Says which kind takes a key that is unknown to this one.
fn other_kinds_keys<'de, Other: Deserialize<'de>>(
    problems: Vec<String>,
    other: &str,
) -> Vec<String> {
    let theirs = serde_aux::serde_introspection::serde_introspect::<Other>();
    problems
        .into_iter()
        .map(|p| {
            let key = p
                .split_once(": unknown field `")
                .and_then(|(at, rest)| Some((at, rest.split('`').next()?)));
            match key {
                Some((at, k)) if theirs.contains(&k) => {
                    format!("{at}: only {other} targets take this key")
                }
                _ => p,
            }
        })
        .collect()
}

impl Common {
    /// Problems of the shared keys.
    fn check(&self, name: &str) -> Vec<String> {
        let key = |k: &str| format!("`alerts.{name}.{k}`");
        let mut p = Vec::new();
        let sources = [
            self.url.is_some(),
            self.url_env.is_some(),
            self.url_file.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources != 1 {
            p.push(format!(
                "{}: set exactly one of `url`, `url_env` or `url_file`",
                key("url")
            ));
        }
        super::check_secret_file(
            self.url_file.as_deref(),
            &format!("alerts.{name}.url_file"),
            &mut p,
        );
        if let Some(s) = &self.min_severity {
            if !SEVERITIES.contains(&s.as_str()) {
                p.push(format!(
                    "{}: expected \"info\", \"warning\" or \"critical\", found {s:?}",
                    key("min_severity")
                ));
            }
        }
        for m in &self.models {
            if let Err(e) = globset::Glob::new(m) {
                p.push(format!("{}: {m:?} is not a glob: {e}", key("models")));
            }
        }
        for (k, d) in [
            ("dead_letter_after", self.dead_letter_after),
            ("backoff_initial", self.backoff_initial),
            ("backoff_max", self.backoff_max),
            ("timeout", self.timeout),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                p.push(format!("{}: must be more than 0s", key(k)));
            }
        }
        if let (Some(a), Some(b)) = (self.backoff_initial, self.backoff_max) {
            if a > b {
                p.push(format!(
                    "{}: must not be more than `backoff_max`",
                    key("backoff_initial")
                ));
            }
        }
        p
    }

    /// The URL as written inline (one from the environment or a file is
    /// checked when it is used, and never shown).
    fn inline_url(&self) -> &str {
        self.url.as_deref().unwrap_or_default()
    }
}

impl EmailSettings {
    /// Problems of an email target's keys.
    fn check(&self, name: &str, common: &Common, p: &mut Vec<String>) {
        let key = |k: &str| format!("`alerts.{name}.{k}`");
        let inline = common.inline_url();
        match url::Url::parse(inline) {
            _ if common.url.is_none() => {}
            Ok(u) if matches!(u.scheme(), "smtp" | "smtps") => {
                if u.password().is_some() {
                    p.push(format!(
                        "{}: put no password in the URL; use `password_env` or `password_file`",
                        key("url")
                    ));
                }
                if u.host_str().is_none_or(str::is_empty) {
                    p.push(format!("{}: the URL has no host", key("url")));
                }
                for (k, v) in u.query_pairs() {
                    if k != "tls" || v != "required" {
                        p.push(format!(
                            "{}: unknown query `{k}={v}` (only `tls=required`, for STARTTLS, is understood)",
                            key("url")
                        ));
                    }
                }
            }
            Ok(u) => p.push(format!(
                "{}: scheme `{}` is not smtp or smtps",
                key("url"),
                u.scheme()
            )),
            Err(_) => p.push(format!(
                "{}: not a URL like smtp://host:25, smtp://host:587?tls=required or smtps://host:465",
                key("url")
            )),
        }
        match &self.from {
            None => p.push(format!("{}: required for email targets", key("from"))),
            Some(f) if f.parse::<lettre::message::Mailbox>().is_err() => {
                p.push(format!("{}: {f:?} is not an email address", key("from")))
            }
            Some(_) => {}
        }
        if self.to.is_empty() {
            p.push(format!("{}: give at least one recipient", key("to")));
        }
        for t in &self.to {
            if t.parse::<lettre::message::Mailbox>().is_err() {
                p.push(format!("{}: {t:?} is not an email address", key("to")));
            }
        }
        let tls =
            common.url.is_none() || inline.starts_with("smtps:") || inline.contains("tls=required");
        if let Some(f) = &self.ca_file {
            if !tls {
                p.push(format!(
                    "{}: only TLS URLs (smtps://, ?tls=required) use a CA file",
                    key("ca_file")
                ));
            } else if !f.is_file() {
                p.push(format!(
                    "{}: {} is not a readable file",
                    key("ca_file"),
                    f.display()
                ));
            }
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            p.push(format!(
                "{}: set `password_env` or `password_file`, not both",
                key("password_file")
            ));
        }
        super::check_secret_file(
            self.password_file.as_deref(),
            &format!("alerts.{name}.password_file"),
            p,
        );
    }
}

impl WebhookSettings {
    /// Problems of a webhook target's keys.
    fn check(&self, name: &str, common: &Common, p: &mut Vec<String>) {
        let key = |k: &str| format!("`alerts.{name}.{k}`");
        match url::Url::parse(common.inline_url()) {
            _ if common.url.is_none() => {}
            Ok(u) if matches!(u.scheme(), "http" | "https") => {
                if u.password().is_some() {
                    p.push(format!("{}: put no credentials in the URL", key("url")));
                }
            }
            Ok(u) => p.push(format!(
                "{}: scheme `{}` is not http or https",
                key("url"),
                u.scheme()
            )),
            Err(e) => p.push(format!("{}: invalid URL: {e}", key("url"))),
        }
        let format = self.format;
        if format == Format::Json && self.secret_env.is_none() && self.secret_file.is_none() {
            p.push(format!(
                "{}: json webhooks are signed; set `secret_env` or `secret_file` (a whsec_... secret)",
                key("secret_env")
            ));
        }
        if format != Format::Json && (self.secret_env.is_some() || self.secret_file.is_some()) {
            p.push(format!(
                "{}: only `format = \"json\"` webhooks are signed",
                key("secret_env")
            ));
        }
        if format != Format::Alertmanager
            && (self.repeat_interval.is_some() || self.resolve_resend.is_some())
        {
            p.push(format!(
                "{}: only `format = \"alertmanager\"` targets repeat alerts",
                key("repeat_interval")
            ));
        }
        if self.secret_env.is_some() && self.secret_file.is_some() {
            p.push(format!(
                "{}: set `secret_env` or `secret_file`, not both",
                key("secret_file")
            ));
        }
        super::check_secret_file(
            self.secret_file.as_deref(),
            &format!("alerts.{name}.secret_file"),
            p,
        );
        if self.repeat_interval.is_some_and(|d| d.is_zero()) {
            p.push(format!("{}: must be more than 0s", key("repeat_interval")));
        }
    }
}
