//! `safedrift history`: past runs, read through the daemon's API.

use std::io::Write;
use std::path::PathBuf;

use crate::{load_config, usage, Output, EXIT_BACKEND};

/// Which runs `history` asks for.
struct RunsQuery {
    model: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

/// `safedrift history`: pages through `GET /api/v1/runs` (the daemon holds
/// the store), following cursors.
pub(crate) async fn history(
    config: Option<PathBuf>,
    api: Option<String>,
    model: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    output: Output,
) -> u8 {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let token = match safedrift::api::load_token(&config.api) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    let base = match api {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let listen = config
                .api
                .listen
                .replace("0.0.0.0:", "127.0.0.1:")
                .replace("[::]:", "[::1]:");
            format!("http://{listen}")
        }
    };
    let url = match reqwest::Url::parse(&format!("{base}/api/v1/runs")) {
        Ok(u) => u,
        Err(e) => return usage(format!("--api {base}: {e}")),
    };
    let query = RunsQuery {
        model,
        status,
        limit,
    };
    let runs = match fetch_runs(url, &base, token.as_deref(), &query).await {
        Ok(runs) => runs,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    let written = match output {
        Output::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Array(runs)).expect("json")
        ),
        Output::Table => write!(out, "{}", runs_table(&runs)),
    };
    match written {
        Ok(()) => 0,
        Err(_) => EXIT_BACKEND,
    }
}

/// Every run the query selects, page after page; an error is the exit
/// code, its message printed.
async fn fetch_runs(
    mut url: reqwest::Url,
    base: &str,
    token: Option<&str>,
    query: &RunsQuery,
) -> Result<Vec<serde_json::Value>, u8> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("http client");
    let limit = query.limit;
    let mut runs: Vec<serde_json::Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let want = limit.map_or(500, |l| (l - runs.len()).clamp(1, 500));
        {
            let mut q = url.query_pairs_mut();
            q.clear();
            q.append_pair("limit", &want.to_string());
            if let Some(m) = &query.model {
                q.append_pair("model", m);
            }
            if let Some(s) = &query.status {
                q.append_pair("status", s);
            }
            if let Some(c) = &cursor {
                q.append_pair("cursor", c);
            }
        }
        let mut request = client.get(url.clone());
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let body = fetch_page(request, base).await?;
        if let Some(items) = body["items"].as_array() {
            runs.extend(items.iter().cloned());
        }
        cursor = body["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() || limit.is_some_and(|l| runs.len() >= l) {
            break;
        }
    }
    Ok(runs)
}

/// One page of runs: the answer's JSON body, or the exit code with its
/// message printed.
async fn fetch_page(request: reqwest::RequestBuilder, base: &str) -> Result<serde_json::Value, u8> {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach the daemon at {base}: {e}. Is `safedrift run` running? (--api URL)");
            return Err(EXIT_BACKEND);
        }
    };
    let code = response.status();
    let body: serde_json::Value = match response.json().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {base} answered {code} with something that is not JSON: {e}");
            return Err(EXIT_BACKEND);
        }
    };
    if code == reqwest::StatusCode::UNAUTHORIZED {
        return Err(usage(format!(
            "{base} refused the API token: set `api.token_file` or `api.token_env` in the config to the daemon's token"
        )));
    }
    if !code.is_success() {
        let message = body["error"].as_str().unwrap_or("unexpected answer");
        return Err(if code.is_client_error() {
            usage(format!("{base}: {message}"))
        } else {
            eprintln!("error: {base} answered {code}: {message}");
            EXIT_BACKEND
        });
    }
    Ok(body)
}

/// The runs as a table, one line each.
fn runs_table(runs: &[serde_json::Value]) -> String {
    let mut text = format!(
        "{:<30} {:<11} {:<40} {:<14} {:<20} {:>6} {}\n",
        "run", "status", "model", "revision", "started", "total", "drift"
    );
    for r in runs {
        let drift = match r["drift_detected"].as_bool() {
            Some(true) => "DRIFT",
            Some(false) => "ok",
            None => "-",
        };
        let revision: String = r["model"]["revision"]
            .as_str()
            .unwrap_or("-")
            .chars()
            .take(14)
            .collect();
        text.push_str(&format!(
            "{:<30} {:<11} {:<40} {:<14} {:<20} {:>6} {}\n",
            r["id"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["model"]["spec"].as_str().unwrap_or(""),
            revision,
            r["started_at"].as_str().unwrap_or(""),
            r["total"].as_u64().unwrap_or(0),
            drift
        ));
    }
    if runs.is_empty() {
        text.push_str("(no runs)\n");
    }
    text
}
