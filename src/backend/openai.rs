//! The OpenAI-compatible chat-completions backend (OpenAI, vLLM, TGI, Ollama).
//!
//! One [`OpenAiClient`] serves one endpoint, which may be several replicas
//! (vLLM servers with no load balancer in front): each request goes to the
//! healthy replica with the fewest requests in flight, and a replica that fails
//! [`EJECT_AFTER`] times in a row is left out for [`EJECT_FOR`]. Requests are
//! bounded by a semaphore (`max_concurrency`) and optionally by
//! requests-per-minute and tokens-per-minute limits. Failures are retried by
//! the policy in [`crate::http`].

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use safedrift_judges::{ChatModel, JudgeError, Message};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::{Backend, BackendError, Decoding, Generation};
use crate::http::{transport_reason, Disposition, RetryPolicy};

/// Consecutive failures after which a replica is left out for a while.
pub const EJECT_AFTER: u32 = 3;
/// How long an ejected replica is left out.
pub const EJECT_FOR: Duration = Duration::from_secs(30);

/// Everything needed to talk to one OpenAI-compatible endpoint.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Base URLs ending in `/v1` (one per replica).
    pub base_urls: Vec<String>,
    /// The bearer token, already read from its env var or file.
    pub api_key: Option<String>,
    pub max_concurrency: usize,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Name of the max-tokens field: `max_tokens` (understood by every
    /// compatible server) or `max_completion_tokens` (OpenAI's newer name).
    pub max_tokens_field: String,
    /// The server continues a final assistant message when asked with
    /// vLLM's `"continue_final_message": true, "add_generation_prompt":
    /// false` (vLLM; others that take those fields). Without it a chat
    /// ending with an assistant message is refused, never sent: OpenAI
    /// would answer it as a new turn.
    pub continue_final_message: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            base_urls: vec!["https://api.openai.com/v1".into()],
            api_key: None,
            max_concurrency: 16,
            requests_per_minute: None,
            tokens_per_minute: None,
            timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            max_tokens_field: "max_tokens".into(),
            continue_final_message: false,
        }
    }
}

struct Replica {
    base_url: String,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn healthy(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .unwrap()
            .is_none_or(|until| until <= now)
    }

    fn record(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            *self.ejected_until.lock().unwrap() = None;
        } else if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= EJECT_AFTER {
            warn!(replica = %self.base_url, "replica keeps failing; leaving it out for {EJECT_FOR:?}");
            *self.ejected_until.lock().unwrap() = Some(Instant::now() + EJECT_FOR);
            self.failures.store(0, Ordering::Relaxed);
        }
    }
}

/// Decrements a replica's in-flight count when a request ends.
struct InFlight<'a>(&'a Replica);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client for one OpenAI-compatible endpoint, shared by every request to it.
pub struct OpenAiClient {
    http: reqwest::Client,
    replicas: Vec<Replica>,
    api_key: Option<String>,
    permits: Semaphore,
    rpm: Option<DefaultDirectRateLimiter>,
    tpm: Option<DefaultDirectRateLimiter>,
    tpm_limit: u32,
    retry: RetryPolicy,
    max_tokens_field: String,
    continue_final_message: bool,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl OpenAiClient {
    pub fn new(config: EndpointConfig) -> Result<OpenAiClient, BackendError> {
        if config.base_urls.is_empty() {
            return Err(BackendError {
                kind: "config",
                message: "no base URL configured".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("safedrift/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BackendError {
                kind: "config",
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        let per_minute = |n: Option<u32>| {
            n.and_then(NonZeroU32::new)
                .map(|n| RateLimiter::direct(Quota::per_minute(n)))
        };
        Ok(OpenAiClient {
            http,
            replicas: config
                .base_urls
                .iter()
                .map(|u| Replica {
                    base_url: u.trim_end_matches('/').to_string(),
                    in_flight: AtomicUsize::new(0),
                    failures: AtomicU32::new(0),
                    ejected_until: Mutex::new(None),
                })
                .collect(),
            api_key: config.api_key,
            permits: Semaphore::new(config.max_concurrency.max(1)),
            rpm: per_minute(config.requests_per_minute),
            tpm: per_minute(config.tokens_per_minute),
            tpm_limit: config.tokens_per_minute.unwrap_or(u32::MAX).max(1),
            retry: config.retry,
            max_tokens_field: config.max_tokens_field,
            continue_final_message: config.continue_final_message,
        })
    }

    /// The healthy replica with the fewest requests in flight; when all are
    /// ejected, the one that comes back first.
    fn pick(&self) -> &Replica {
        let now = Instant::now();
        let healthy = self.replicas.iter().filter(|r| r.healthy(now));
        healthy
            .min_by_key(|r| r.in_flight.load(Ordering::Relaxed))
            .unwrap_or_else(|| {
                self.replicas
                    .iter()
                    .min_by_key(|r| r.ejected_until.lock().unwrap().unwrap_or(now))
                    .expect("at least one replica")
            })
    }

    async fn throttle(&self, estimated_tokens: u32) {
        if let Some(rpm) = &self.rpm {
            rpm.until_ready().await;
        }
        if let Some(tpm) = &self.tpm {
            // A request larger than the whole minute's budget waits for a full bucket.
            let n = estimated_tokens.clamp(1, self.tpm_limit);
            let n = NonZeroU32::new(n).expect("clamped to at least 1");
            let _ = tpm.until_n_ready(n).await;
        }
    }

    /// Removes the API key from text a server may have echoed it into.
    fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if key.len() >= 4 => text.replace(key.as_str(), "***"),
            _ => text.to_string(),
        }
    }

    /// The endpoint's base URLs, part of a model's identity: the same model
    /// name on two servers is two models.
    pub fn endpoint(&self) -> String {
        self.replicas
            .iter()
            .map(|r| r.base_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether this endpoint continues a final assistant message
    /// ([`EndpointConfig::continue_final_message`]); `Err` names the model
    /// and the endpoint.
    pub fn prefill(&self, model: &str) -> Result<(), BackendError> {
        if self.continue_final_message {
            return Ok(());
        }
        Err(super::no_prefill(
            &format!("model `{model}` at {}", self.endpoint()),
            "the endpoint is not configured as a vLLM server (serve the model with vLLM and \
             name it through a `[backends.NAME]` entry of `kind = \"vllm\"`, or set \
             `continue_final_message = true` on an entry whose server takes vLLM's flags)",
        ))
    }

    /// Sends one chat completion with retries.
    pub async fn chat(
        &self,
        model: &str,
        messages: &[Message],
        decoding: &Decoding,
    ) -> Result<Generation, BackendError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        let mut body = serde_json::json!({
            "model": model,
            "messages": messages,
            "temperature": decoding.temperature,
        });
        body[self.max_tokens_field.as_str()] = decoding.max_new_tokens.into();
        if super::ends_with_assistant(messages) {
            self.prefill(model)?;
            body["continue_final_message"] = true.into();
            body["add_generation_prompt"] = false.into();
        }
        let prompt_chars: usize = messages.iter().map(|m| m.content.len()).sum();
        let estimate = u32::try_from(prompt_chars / 4)
            .unwrap_or(u32::MAX)
            .saturating_add(decoding.max_new_tokens);
        let mut attempt = 0;
        loop {
            self.throttle(estimate).await;
            let replica = self.pick();
            replica.in_flight.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight(replica);
            let started = Instant::now();
            let result = self.send_once(replica, &body).await;
            drop(guard);
            let disposition = match result {
                Ok(mut generation) => {
                    replica.record(true);
                    generation.latency_ms = started.elapsed().as_millis() as u64;
                    return Ok(generation);
                }
                Err(d) => d,
            };
            match disposition {
                Disposition::Fatal { kind, message } => {
                    return Err(BackendError {
                        kind,
                        message: self.redact(&format!(
                            "model `{model}` at {}: {message}",
                            replica.base_url
                        )),
                    });
                }
                Disposition::Retry { hint, reason } => {
                    replica.record(false);
                    if attempt >= self.retry.max_retries {
                        return Err(BackendError {
                            kind: "exhausted",
                            message: self.redact(&format!(
                                "model `{model}` at {}: gave up after {} attempts: {reason}",
                                replica.base_url,
                                attempt + 1
                            )),
                        });
                    }
                    let delay = self.retry.delay(attempt, hint);
                    debug!(model, replica = %replica.base_url, %reason, ?delay, attempt, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn send_once(
        &self,
        replica: &Replica,
        body: &serde_json::Value,
    ) -> Result<Generation, Disposition> {
        let url = format!("{}/chat/completions", replica.base_url);
        let mut request = self.http.post(&url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let retry = |reason: String| Disposition::Retry { hint: None, reason };
        let response = request
            .send()
            .await
            .map_err(|e| retry(transport_reason(&e.without_url())))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .map_err(|e| retry(transport_reason(&e.without_url())))?;
        if !status.is_success() {
            return Err(self.retry.classify(status, &headers, &text));
        }
        let parsed: ChatResponse = serde_json::from_str(&text)
            .map_err(|e| retry(format!("unreadable chat completion ({e})")))?;
        let choice = parsed
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| retry("chat completion without choices".into()))?;
        let text = choice
            .message
            .content
            .or(choice.message.refusal)
            .unwrap_or_default();
        Ok(Generation {
            text,
            finish_reason: choice.finish_reason,
            prompt_tokens: parsed.usage.as_ref().and_then(|u| u.prompt_tokens),
            completion_tokens: parsed.usage.as_ref().and_then(|u| u.completion_tokens),
            latency_ms: 0,
        })
    }
}

/// A model served by an [`OpenAiClient`].
pub struct OpenAiModel {
    pub client: Arc<OpenAiClient>,
    pub model: String,
}

#[async_trait]
impl Backend for OpenAiModel {
    fn identity(&self) -> String {
        format!("openai:{}@{}", self.model, self.client.endpoint())
    }

    async fn generate(
        &self,
        messages: &[Message],
        decoding: &Decoding,
    ) -> Result<Generation, BackendError> {
        self.client.chat(&self.model, messages, decoding).await
    }

    fn prefill(&self) -> Result<(), String> {
        self.client.prefill(&self.model).map_err(|e| e.message)
    }
}

#[async_trait]
impl ChatModel for OpenAiModel {
    async fn chat(&self, messages: &[Message], max_tokens: u32) -> Result<String, JudgeError> {
        let decoding = Decoding {
            max_new_tokens: max_tokens,
            ..Decoding::default()
        };
        self.client
            .chat(&self.model, messages, &decoding)
            .await
            .map(|g| g.text)
            .map_err(|e| JudgeError {
                kind: e.kind,
                message: format!("judge {}", e.message),
            })
    }
}
