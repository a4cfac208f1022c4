//! Reading a chat template's source: error locations and messages, the
//! tokenizer config's template list and special tokens, and the
//! `{% generation %}` tags rewritten for minijinja.

use minijinja::Error;

/// minijinja's message without its "(in chat_template:N)" suffix.
pub(super) fn describe(err: &Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

/// The template text an error points at, cut to a readable length (chat
/// templates are often one long line).
pub(super) fn near(err: &Error, compiled: &str) -> Option<String> {
    const MAX_CHARS: usize = 80;
    let range = err.range()?;
    let text = compiled.get(range)?.trim();
    if text.is_empty() {
        return None;
    }
    let mut chars = text.chars();
    let mut cut: String = chars.by_ref().take(MAX_CHARS).collect();
    if chars.next().is_some() {
        cut.push_str("...");
    }
    Some(cut.replace('\n', "\\n"))
}

/// The `default` entry of HF's list form; the error completes
/// "chat_template ...".
pub(super) fn pick_default_template(list: &[serde_json::Value]) -> Result<String, String> {
    let mut names = Vec::new();
    for entry in list {
        let name = entry.get("name").and_then(|v| v.as_str());
        let template = entry.get("template").and_then(|v| v.as_str());
        match (name, template) {
            (Some("default"), Some(template)) => return Ok(template.to_string()),
            (Some(name), Some(_)) => names.push(name.to_string()),
            _ => {
                return Err(
                    "is a list whose entries must be {\"name\": ..., \"template\": ...} \
                     objects with string values"
                        .into(),
                )
            }
        }
    }
    Err(format!(
        "lists templates named {names:?} but none named \"default\" \
         (transformers needs one to pick)"
    ))
}

/// A token's text: a string, an `AddedToken` object's `content`, or `None`
/// for `null`. The error completes "<name> ...".
pub(super) fn token_text(token: &serde_json::Value) -> Result<Option<String>, String> {
    let text = match token {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::String(text) => text,
        serde_json::Value::Object(added) => match added.get("content") {
            Some(serde_json::Value::String(text)) => text,
            _ => return Err("is an object without a string \"content\"".into()),
        },
        other => {
            return Err(format!(
                "must be a string or an AddedToken object, not {}",
                json_type(other)
            ))
        }
    };
    Ok(Some(text.clone()))
}

pub(super) fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `{% generation %}` / `{% endgeneration %}` (transformers'
/// `AssistantTracker`) become `{% with %}` / `{% endwith %}`: the body
/// renders as is, in its own scope as in Jinja2 (it is a call block there),
/// and the tags' whitespace control is unchanged. Line numbers stay the
/// same.
pub(super) fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let mut i = 2;
        if matches!(tag.as_bytes().get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let ws = tag[i..].len() - tag[i..].trim_start().len();
        let word_start = i + ws;
        let word_len = tag[word_start..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(tag.len() - word_start);
        let word = &tag[word_start..word_start + word_len];
        let after = tag[word_start + word_len..].trim_start();
        let closes =
            after.starts_with("%}") || after.starts_with("-%}") || after.starts_with("+%}");
        let replacement = match word {
            "generation" if closes => Some("with"),
            "endgeneration" if closes => Some("endwith"),
            _ => None,
        };
        match replacement {
            Some(replacement) => {
                out.push_str(&tag[..word_start]);
                out.push_str(replacement);
                rest = &tag[word_start + word_len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}
