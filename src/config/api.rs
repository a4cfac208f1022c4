//! `[api]`: where the HTTP API listens, who may call it, and its limits.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    /// Base URL of the API and dashboard as users reach it, for links in
    /// alerts (default `http://<listen>`).
    pub public_url: Option<String>,
    /// Largest request body accepted, in bytes (default 65536).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Deadline of one request, e.g. "10s" (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// Requests handled at once; the rest wait (default 64).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// `POST /api/v1/evaluations` answers 429 while this many checkpoints
    /// are queued or running (default 100).
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Origins allowed by CORS (e.g. "https://grafana.example.com"); CORS
    /// is off when empty (the default).
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Directories (or files) under which API requests may name local
    /// paths (`onnx:DIR`, `jsonl:FILE`, `classifier:DIR`, ...), checked
    /// after symlinks and `..` are resolved. Empty (the default): the API
    /// names only configured entries and registry models.
    #[serde(default)]
    pub allowed_paths: Vec<PathBuf>,
    /// Host names (or IP addresses) the API answers to, besides the listen
    /// address, `localhost`, `127.0.0.1` and `::1`; any other `Host` header
    /// gets 421 (a DNS-rebinding guard).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Allows listening on a non-loopback address without a token.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

fn default_listen() -> String {
    "127.0.0.1:7300".into()
}
fn default_max_body_bytes() -> usize {
    64 * 1024
}
fn default_max_concurrency() -> usize {
    64
}
fn default_max_queue() -> usize {
    100
}

impl ApiConfig {
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(Duration::from_secs(10))
    }

    /// Problems of `allowed_paths`, `allowed_hosts`, and of a listen
    /// address other hosts can reach while no token is configured.
    fn exposure_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (i, path) in self.allowed_paths.iter().enumerate() {
            if !path.is_absolute() {
                p.push(format!(
                    "`api.allowed_paths[{i}]`: {} is not an absolute path",
                    path.display()
                ));
            }
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            let ok = !host.is_empty()
                && host.len() <= 253
                && (host.parse::<std::net::IpAddr>().is_ok()
                    || host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
            if !ok {
                p.push(format!(
                    "`api.allowed_hosts[{i}]`: {host:?} is not a host name or IP address (no scheme, port or path)"
                ));
            }
        }
        let unauthenticated = self.token_file.is_none() && self.token_env.is_none();
        if let Ok(addr) = self.listen.parse::<std::net::SocketAddr>() {
            if !addr.ip().is_loopback() && unauthenticated && !self.allow_unauthenticated {
                p.push(format!(
                    "`api.listen`: {addr} is reachable from other hosts and no token is configured: \
                     set `api.token_file` or `api.token_env`, listen on 127.0.0.1, \
                     or set `api.allow_unauthenticated = true` to serve the API to anyone who can reach it"
                ));
            }
        }
        p
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            token_file: None,
            token_env: None,
            public_url: None,
            max_body_bytes: default_max_body_bytes(),
            request_timeout: None,
            max_concurrency: default_max_concurrency(),
            max_queue: default_max_queue(),
            cors_origins: Vec::new(),
            allowed_paths: Vec::new(),
            allowed_hosts: Vec::new(),
            allow_unauthenticated: false,
        }
    }
}

impl ApiConfig {
    /// Problems of the `[api]` table (its `public_url` is checked with the
    /// alert targets, which link to it).
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "`api.listen`: {:?} is not an address like 127.0.0.1:7300",
                self.listen
            ));
        }
        if let Some(f) = &self.token_file {
            if !f.exists() {
                p.push(format!("`api.token_file`: {} does not exist", f.display()));
            }
        }
        if self.token_file.is_some() && self.token_env.is_some() {
            p.push("`api.token_env`: set `token_file` or `token_env`, not both".into());
        }
        if self.max_body_bytes < 1024 {
            p.push("`api.max_body_bytes`: at least 1024".into());
        }
        if self.max_concurrency == 0 {
            p.push("`api.max_concurrency`: at least 1".into());
        }
        if self.max_queue == 0 {
            p.push("`api.max_queue`: at least 1".into());
        }
        if self.request_timeout.is_some_and(|t| t.is_zero()) {
            p.push("`api.request_timeout`: must be more than zero".into());
        }
        for (i, o) in self.cors_origins.iter().enumerate() {
            let ok = url::Url::parse(o).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https") && u.path() == "/" && !o.ends_with('/')
            });
            if !ok {
                p.push(format!(
                    "`api.cors_origins[{i}]`: {o:?} is not an origin like https://example.com"
                ));
            }
        }
        p.extend(self.exposure_problems());
        p
    }
}
