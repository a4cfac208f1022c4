//! Renders a model's Hugging Face chat template (the Jinja `chat_template` of
//! its `tokenizer_config.json`) the way transformers'
//! `tokenizer.apply_chat_template(messages, tokenize=False,
//! add_generation_prompt=...)` does, so a local backend sends the model the
//! same prompt text it was fine-tuned on.
//!
//! transformers (checked against 5.24.0) compiles the template in a
//! sandboxed Jinja2 environment with `trim_blocks=True`, `lstrip_blocks=True`
//! and the `loopcontrols` extension, adds the globals `raise_exception(msg)`
//! and `strftime_now(fmt)`, replaces the `tojson` filter with
//! `json.dumps(x, ensure_ascii=False, ...)`, and renders with `messages`,
//! `tools=None`, `documents=None`, `add_generation_prompt` and the
//! tokenizer's special tokens (`bos_token`, `eos_token`, `unk_token`,
//! `pad_token`, ..., only those that are set). This module sets up minijinja
//! the same way:
//!
//! * whitespace control, a dropped final newline, `\r\n` read as `\n`, and
//!   Jinja's default undefined handling: an undefined value prints as
//!   nothing, iterates as empty and has length 0, while looking something up
//!   *on* an undefined value is an error;
//! * Python's string/dict/list methods (`.strip()`, `.startswith()`,
//!   `.items()`, `.get()`, `.split()`, ...) through minijinja-contrib's
//!   `pycompat`;
//! * `{{ x }}` prints `None`, `True`, `False`, floats and containers as
//!   Python's `str()` does;
//! * `tojson` takes HF's `ensure_ascii`, `indent`, `separators` and
//!   `sort_keys` arguments and writes what `json.dumps` writes;
//! * a message's keys keep a Python dict's order (`role`, then `content`);
//! * `is sequence` and `|wordcount` as in Jinja2;
//! * `{% generation %}` blocks (HF's assistant-mask extension) render their
//!   body, as they do when no mask is asked for.
//!
//! What still differs from Jinja2: `~` and `|string` write `none`/`true`
//! where Python writes `None`/`True`; Python's `'%s' % x` formatting is
//! missing (`|format` works); tuples print as lists; dict literals written
//! in the template itself iterate in key order unless minijinja's
//! `preserve_order` feature is on; and `{% break %}`/`{% continue %}` need
//! minijinja's `loop_controls` feature (without it such a template fails to
//! compile, with an error that says so).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Rest, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};

/// Name under which the template is compiled; it shows in minijinja's own
/// messages only.
const TEMPLATE_NAME: &str = "chat_template";

/// What describes a template built by [`ChatTemplate::new`] in error messages.
const INLINE_ORIGIN: &str = "inline source";

/// The special tokens transformers passes to a chat template
/// (`SPECIAL_TOKENS_ATTRIBUTES`); those that are `null` are left out.
const SPECIAL_TOKENS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Why a chat template could not be loaded or rendered. Each message names
/// where the template came from: the `tokenizer_config.json` (or
/// `chat_template.jinja`) path, or "inline source" for one given to
/// [`ChatTemplate::new`].
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{} has no chat_template, and there is no chat_template.jinja beside it: \
         this tokenizer does not say how to lay out a conversation",
        path.display()
    )]
    Missing { path: PathBuf },
    /// The file has the field, but not in a form transformers accepts.
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    /// The template does not compile. `line` is the line in the template,
    /// `near` the text the error points at.
    #[error("chat template from {origin} does not compile{}: {message}", location(*line, near))]
    Syntax {
        origin: String,
        line: Option<usize>,
        near: Option<String>,
        message: String,
    },
    /// The template called `raise_exception(message)`; `message` is its
    /// argument, verbatim.
    #[error("chat template from {origin} raised an error: {message}")]
    Raised { origin: String, message: String },
    /// Rendering failed some other way.
    #[error("chat template from {origin} failed to render{}: {message}", location(*line, near))]
    Render {
        origin: String,
        line: Option<usize>,
        near: Option<String>,
        message: String,
    },
}

fn location(line: Option<usize>, near: &Option<String>) -> String {
    match (line, near) {
        (Some(line), Some(near)) => format!(" (template line {line}, at `{near}`)"),
        (Some(line), None) => format!(" (template line {line})"),
        (None, Some(near)) => format!(" (at `{near}`)"),
        (None, None) => String::new(),
    }
}

/// One chat message as the template sees it: `message['role']` and
/// `message['content']` (also `message.role`, `message.items()`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChatMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

impl<'a> ChatMessage<'a> {
    pub fn new(role: &'a str, content: &'a str) -> Self {
        ChatMessage { role, content }
    }
}

/// A compiled chat template with the special tokens it is rendered with.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    /// `source` as compiled (newlines normalized, generation tags rewritten);
    /// error offsets point into it.
    compiled: String,
    origin: String,
    /// Variables passed besides `messages`, `tools`, `documents` and
    /// `add_generation_prompt`: the special tokens that are set, and any
    /// added with [`ChatTemplate::with_variable`].
    variables: BTreeMap<String, Value>,
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("variables", &self.variables)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Reads `chat_template`, `bos_token`, `eos_token` and the other special
    /// tokens from a `tokenizer_config.json`, and compiles the template.
    ///
    /// `chat_template` is a string, or HF's list form
    /// `[{"name": "default", "template": ...}, ...]`, of which the one named
    /// `default` is used. As in transformers, a `chat_template.jinja` beside
    /// the config takes precedence over both. A token is a string, an
    /// `AddedToken` object (`{"content": ...}`) or `null`.
    pub fn from_tokenizer_config(path: &Path) -> Result<ChatTemplate, ChatTemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| ChatTemplateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ChatTemplateError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let invalid = |problem: String| ChatTemplateError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        let Some(config) = config.as_object() else {
            return Err(invalid("expected a JSON object at the top level".into()));
        };

        let jinja_file = path
            .parent()
            .unwrap_or(Path::new(""))
            .join("chat_template.jinja");
        let (source, origin) = if jinja_file.is_file() {
            let source =
                std::fs::read_to_string(&jinja_file).map_err(|source| ChatTemplateError::Read {
                    path: jinja_file.clone(),
                    source,
                })?;
            (source, jinja_file.display().to_string())
        } else {
            let source = match config.get("chat_template") {
                None | Some(serde_json::Value::Null) => {
                    return Err(ChatTemplateError::Missing {
                        path: path.to_path_buf(),
                    })
                }
                Some(serde_json::Value::String(source)) => source.clone(),
                Some(serde_json::Value::Array(list)) => pick_default_template(list)
                    .map_err(|problem| invalid(format!("chat_template {problem}")))?,
                Some(other) => {
                    return Err(invalid(format!(
                        "chat_template must be a string or a list of \
                         {{\"name\", \"template\"}} objects, not {}",
                        json_type(other)
                    )))
                }
            };
            (source, path.display().to_string())
        };

        let mut tokens = BTreeMap::new();
        for name in SPECIAL_TOKENS {
            if let Some(token) = config.get(name) {
                let token =
                    token_text(token).map_err(|problem| invalid(format!("{name} {problem}")))?;
                if let Some(token) = token {
                    tokens.insert(name.to_string(), Value::from(token));
                }
            }
        }
        // Model-specific named tokens (`"extra_special_tokens": {"image_token":
        // ...}`) are passed too; the list form is not.
        if let Some(extra) = config
            .get("extra_special_tokens")
            .and_then(|v| v.as_object())
        {
            for (name, token) in extra {
                let token = token_text(token)
                    .map_err(|problem| invalid(format!("extra_special_tokens.{name} {problem}")))?;
                if let Some(token) = token {
                    tokens.insert(name.clone(), Value::from(token));
                }
            }
        }
        ChatTemplate::build(source, origin, tokens)
    }

    /// Compiles `source`; a syntax error is reported here, not at render
    /// time. A token that is `None` is left undefined in the template.
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        let mut tokens = BTreeMap::new();
        for (name, token) in [("bos_token", bos_token), ("eos_token", eos_token)] {
            if let Some(token) = token {
                tokens.insert(name.to_string(), Value::from(token));
            }
        }
        ChatTemplate::build(source.to_string(), INLINE_ORIGIN.to_string(), tokens)
    }

    /// Sets another variable the template sees, such as `pad_token`, or a
    /// template option like `enable_thinking` (what transformers takes as
    /// extra keyword arguments). It overrides a special token of that name;
    /// `messages`, `tools`, `documents` and `add_generation_prompt` are set
    /// by [`ChatTemplate::render`] and win over it.
    pub fn with_variable(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.variables.insert(name.to_string(), value.into());
        self
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The BOS token the template is rendered with.
    pub fn bos_token(&self) -> Option<&str> {
        self.variables.get("bos_token").and_then(|v| v.as_str())
    }

    /// The EOS token the template is rendered with.
    pub fn eos_token(&self) -> Option<&str> {
        self.variables.get("eos_token").and_then(|v| v.as_str())
    }

    /// Renders the prompt for `messages`; with `add_generation_prompt` the
    /// template appends the header that opens the assistant's turn. The
    /// result already holds the special tokens the template writes (a BOS
    /// token, say), so tokenize it without adding special tokens again, as
    /// transformers does.
    pub fn render(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_object(MessageObject {
                    role: Value::from(m.role),
                    content: Value::from(m.content),
                })
            })
            .collect();
        let mut ctx = self.variables.clone();
        ctx.insert("messages".into(), Value::from(messages));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|err| self.render_error(&err))?;
        template
            .render(Value::from(ctx))
            .map_err(|err| self.render_error(&err))
    }

    fn build(
        source: String,
        origin: String,
        variables: BTreeMap<String, Value>,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_debug(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_filter("length", length);
        env.add_filter("count", length);
        env.add_filter("wordcount", wordcount);
        env.add_test("sequence", is_sequence);
        // Jinja2 reads \r\n and \r as \n everywhere in a template.
        let compiled = rewrite_generation_tags(&source.replace("\r\n", "\n").replace('\r', "\n"));
        if let Err(err) = env.add_template_owned(TEMPLATE_NAME, compiled.clone()) {
            let mut message = describe(&err);
            if message.contains("unknown statement break")
                || message.contains("unknown statement continue")
            {
                message.push_str(
                    " ({% break %} and {% continue %} need minijinja's \"loop_controls\" feature)",
                );
            }
            return Err(ChatTemplateError::Syntax {
                origin,
                line: err.line(),
                near: near(&err, &compiled),
                message,
            });
        }
        Ok(ChatTemplate {
            source,
            compiled,
            origin,
            variables,
            env,
        })
    }

    fn render_error(&self, err: &Error) -> ChatTemplateError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cause {
            if let Some(raised) = e.downcast_ref::<RaisedException>() {
                return ChatTemplateError::Raised {
                    origin: self.origin.clone(),
                    message: raised.0.clone(),
                };
            }
            cause = e.source();
        }
        ChatTemplateError::Render {
            origin: self.origin.clone(),
            line: err.line(),
            near: near(err, &self.compiled),
            message: describe(err),
        }
    }
}

/// minijinja's message without its "(in chat_template:N)" suffix.
fn describe(err: &Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

/// The template text an error points at, cut to a readable length (chat
/// templates are often one long line).
fn near(err: &Error, compiled: &str) -> Option<String> {
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
fn pick_default_template(list: &[serde_json::Value]) -> Result<String, String> {
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
fn token_text(token: &serde_json::Value) -> Result<Option<String>, String> {
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

fn json_type(value: &serde_json::Value) -> &'static str {
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
fn rewrite_generation_tags(source: &str) -> String {
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

/// A message as a map whose keys iterate in a dict's order.
#[derive(Debug)]
struct MessageObject {
    role: Value,
    content: Value,
}

impl Object for MessageObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(self.role.clone()),
            "content" => Some(self.content.clone()),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// The error `raise_exception` raises; found again in the error's sources.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

fn raise_exception(message: &Value) -> Result<Value, Error> {
    let message = python_str(message);
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedException(message)))
}

/// `datetime.now().strftime(format)`, in local time.
fn strftime_now(format: &str) -> Result<String, Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(out)
}

/// Prints values as Jinja2 does, with Python's `str()`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &State,
    value: &Value,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::String => minijinja::escape_formatter(out, state, value),
        _ => out.write_str(&python_str(value)).map_err(Error::from),
    }
}

/// Python's `str(value)`.
fn python_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        ValueKind::Undefined => String::new(),
        _ => {
            let mut out = String::new();
            python_repr(&mut out, value);
            out
        }
    }
}

/// Python's `repr(value)` for the kinds a template meets.
fn python_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(f) => push_python_float(out, f, "nan", "inf"),
            Err(_) => {
                let _ = write!(out, "{value}");
            }
        },
        ValueKind::String => push_python_string_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_repr(out, &item);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_repr(out, &key);
                    out.push_str(": ");
                    let item = value.get_item(&key).unwrap_or(Value::UNDEFINED);
                    python_repr(out, &item);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

fn push_python_string_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `repr(float)`: shortest round-trip digits, scientific notation
/// below 1e-4 and from 1e16 on. `nan`/`inf` are spelled as given (`repr`
/// and `json.dumps` differ).
fn push_python_float(out: &mut String, f: f64, nan: &str, inf: &str) {
    if f.is_nan() {
        out.push_str(nan);
        return;
    }
    if f.is_sign_negative() {
        out.push('-');
    }
    let f = f.abs();
    if f.is_infinite() {
        out.push_str(inf);
        return;
    }
    // `{:e}` gives the shortest digits that round-trip, as Python's repr does.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if !(-4..16).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            for _ in digits.len()..int_len {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
}

/// `|length` as in Jinja2, where an undefined value has length 0.
fn length(value: &Value) -> Result<usize, Error> {
    if value.is_undefined() {
        Ok(0)
    } else {
        minijinja::filters::length(value)
    }
}

/// Jinja2's `|wordcount`: the number of runs of word characters.
fn wordcount(value: &str) -> usize {
    value
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|word| !word.is_empty())
        .count()
}

/// Jinja2's `is sequence`: anything with a length and items, strings and
/// dicts included.
fn is_sequence(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::String | ValueKind::Bytes | ValueKind::Seq | ValueKind::Map
    )
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, arguments by position or keyword.
fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    if args.len() > 4 {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments (ensure_ascii, indent, separators, sort_keys)",
        ));
    }
    let take = |name: &str, index: usize| -> Result<Value, Error> {
        let positional = args.get(index).cloned();
        let keyword: Option<Value> = kwargs.get(name)?;
        match (positional, keyword) {
            (Some(_), Some(_)) => Err(Error::new(
                ErrorKind::TooManyArguments,
                format!("tojson got multiple values for argument {name:?}"),
            )),
            (Some(v), None) | (None, Some(v)) => Ok(v),
            (None, None) => Ok(Value::from(())),
        }
    };
    let ensure_ascii = take("ensure_ascii", 0)?.is_true();
    let indent = take("indent", 1)?;
    let separators = take("separators", 2)?;
    let sort_keys = take("sort_keys", 3)?.is_true();
    kwargs.assert_all_used()?;

    let indent = match indent.kind() {
        ValueKind::None | ValueKind::Undefined => None,
        ValueKind::String => Some(indent.as_str().unwrap_or_default().to_string()),
        ValueKind::Number if indent.is_integer() => {
            let n = indent.as_i64().unwrap_or(0).max(0) as usize;
            Some(" ".repeat(n))
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: indent must be an integer or a string",
            ))
        }
    };
    let (item_sep, key_sep) = match separators.kind() {
        ValueKind::None | ValueKind::Undefined => {
            let item_sep = if indent.is_some() { "," } else { ", " };
            (item_sep.to_string(), ": ".to_string())
        }
        _ => {
            let parts: Vec<String> = separators
                .try_iter()?
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .unwrap_or_default();
            match <[String; 2]>::try_from(parts) {
                Ok([item_sep, key_sep]) => (item_sep, key_sep),
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
    };
    let encoder = JsonEncoder {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    encoder.encode(&mut out, value, 0)?;
    Ok(Value::from(out))
}

/// Python's `json.JSONEncoder`, over minijinja values.
struct JsonEncoder {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonEncoder {
    fn encode(&self, out: &mut String, value: &Value, level: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => {
                let _ = write!(out, "{value}");
            }
            ValueKind::Number => {
                let f = f64::try_from(value.clone())?;
                push_python_float(out, f, "NaN", "Infinity");
            }
            ValueKind::String => self.encode_str(out, value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.encode_container(out, '[', ']', &items, level, |out, item, level| {
                    self.encode(out, item, level)
                })?;
            }
            ValueKind::Map => {
                let mut pairs = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    pairs.push((self.key_text(&key)?, item));
                }
                if self.sort_keys {
                    pairs.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.encode_container(out, '{', '}', &pairs, level, |out, (key, item), level| {
                    self.encode_str(out, key);
                    out.push_str(&self.key_sep);
                    self.encode(out, item, level)
                })?;
            }
            kind => {
                let kind = if kind == ValueKind::Undefined {
                    "Undefined".to_string()
                } else {
                    kind.to_string()
                };
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: object of type {kind} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    fn encode_container<T>(
        &self,
        out: &mut String,
        open: char,
        close: char,
        items: &[T],
        level: usize,
        encode_item: impl Fn(&mut String, &T, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        let newline = |out: &mut String, level: usize| {
            if let Some(indent) = &self.indent {
                out.push('\n');
                for _ in 0..level {
                    out.push_str(indent);
                }
            }
        };
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            newline(out, level + 1);
            encode_item(out, item, level + 1)?;
        }
        newline(out, level);
        out.push(close);
        Ok(())
    }

    /// Python turns str, int, float, bool and None keys into strings.
    fn key_text(&self, key: &Value) -> Result<String, Error> {
        Ok(match key.kind() {
            ValueKind::String => key.as_str().unwrap_or_default().to_string(),
            ValueKind::None => "null".into(),
            ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).into(),
            ValueKind::Number if key.is_integer() => key.to_string(),
            ValueKind::Number => {
                let mut s = String::new();
                push_python_float(&mut s, f64::try_from(key.clone())?, "NaN", "Infinity");
                s
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
                ))
            }
        })
    }

    fn encode_str(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) >= 0x7f) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    //! Every expected string below was derived by reading the template and
    //! then checked against transformers 5.24.0's `render_jinja_template`
    //! (what `apply_chat_template(..., tokenize=False)` calls) on Jinja2
    //! 3.1.6, with the same messages and special tokens.

    use super::*;

    fn msgs<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<ChatMessage<'a>> {
        pairs
            .iter()
            .map(|&(role, content)| ChatMessage::new(role, content))
            .collect()
    }

    fn render(template: &ChatTemplate, pairs: &[(&str, &str)], agp: bool) -> String {
        template.render(&msgs(pairs), agp).unwrap()
    }

    /// SmolLM2-135M-Instruct's template, as in its tokenizer_config.json
    /// (where the JSON `\n` escapes become newlines; here they are Jinja
    /// string escapes, which render the same).
    const SMOLLM2: &str = r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// The classic Llama-2-chat template.
    const LLAMA2: &str = r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

    /// Llama-3-instruct's template.
    const LLAMA3: &str = r"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    const SMOL_SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

    #[test]
    fn smollm2_adds_its_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, None, Some("<|im_end|>".into())).unwrap();
        assert_eq!(
            render(&t, &[("user", "Hello!")], true),
            format!("{SMOL_SYSTEM}<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n")
        );
        assert_eq!(
            render(&t, &[("user", "Hello!")], false),
            format!("{SMOL_SYSTEM}<|im_start|>user\nHello!<|im_end|>\n")
        );
    }

    #[test]
    fn smollm2_keeps_a_given_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, None, Some("<|im_end|>".into())).unwrap();
        let conversation = [
            ("system", "You are a pirate."),
            ("user", "Hi"),
            ("assistant", "Arr!"),
            ("user", "Where is the treasure?"),
        ];
        assert_eq!(
            render(&t, &conversation, true),
            "<|im_start|>system\nYou are a pirate.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nArr!<|im_end|>\n\
             <|im_start|>user\nWhere is the treasure?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        assert_eq!(
            render(&t, &conversation[..3], false),
            "<|im_start|>system\nYou are a pirate.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nArr!<|im_end|>\n"
        );
    }

    #[test]
    fn llama2_folds_the_system_prompt_into_the_first_turn() {
        let t = ChatTemplate::new(LLAMA2, Some("<s>".into()), Some("</s>".into())).unwrap();
        let conversation = [
            ("system", "Be brief."),
            ("user", " Hi there "),
            ("assistant", " Hello! "),
            ("user", "Bye"),
        ];
        // `.strip()` trims the whole "<<SYS>>...\n\n Hi there " string, so the
        // space after the blank line stays.
        assert_eq!(
            render(&t, &conversation, true),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi there [/INST] Hello! </s><s>[INST] Bye [/INST]"
        );
        assert_eq!(render(&t, &[("user", "Hi")], true), "<s>[INST] Hi [/INST]");
    }

    #[test]
    fn llama2_raise_exception_message_surfaces() {
        let t = ChatTemplate::new(LLAMA2, Some("<s>".into()), Some("</s>".into())).unwrap();
        let err = t
            .render(&msgs(&[("user", "a"), ("user", "b")]), true)
            .unwrap_err();
        match &err {
            ChatTemplateError::Raised { origin, message } => {
                assert_eq!(
                    message,
                    "Conversation roles must alternate user/assistant/user/assistant/..."
                );
                assert_eq!(origin, INLINE_ORIGIN);
            }
            other => panic!("expected Raised, got {other:?}"),
        }
        assert!(err
            .to_string()
            .ends_with(": Conversation roles must alternate user/assistant/user/assistant/..."));
    }

    #[test]
    fn llama3_trims_content_and_prefixes_bos() {
        let t = ChatTemplate::new(
            LLAMA3,
            Some("<|begin_of_text|>".into()),
            Some("<|eot_id|>".into()),
        )
        .unwrap();
        assert_eq!(
            render(
                &t,
                &[("system", "You are helpful."), ("user", "  What's up?\n")],
                true
            ),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nWhat's up?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            render(&t, &[("user", "Hi"), ("assistant", "Hello!")], false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        );
    }

    /// namespace(), tojson (HF's: `, `/`: ` separators, no HTML escaping,
    /// non-ASCII kept), strftime_now, Python string/dict methods, loop
    /// variables, slicing, default, undefined values, `~` and `+`, and
    /// trim_blocks/lstrip_blocks on an indented multi-line template.
    const FEATURES: &str = r#"{%- set ns = namespace(system='', users=0) -%}
{%- for m in messages -%}
    {%- if m.role == 'system' -%}
        {%- set ns.system = m.content -%}
    {%- elif m.content.startswith('/') -%}
        {{- raise_exception('commands are not allowed: ' + m.content) -}}
    {%- else -%}
        {%- set ns.users = ns.users + 1 -%}
    {%- endif -%}
{%- endfor -%}
system={{ ns.system | tojson }} turns={{ ns.users }}
last={{ messages[-1] | tojson }}
{% if strftime_now is defined %}
year digits={{ strftime_now('%Y') | length }}
{% endif %}
{% for m in messages[1:] %}
    {{ loop.index }}/{{ loop.length }} {{ m.role }}: {{ m.content | trim }}{{ ' (last)' if loop.last }}
{% endfor %}
[{{ undefined_var }}][{{ messages[0].name | default('anon') }}][{{ messages[0].items() | list | length }}][{{ messages | selectattr('role', 'equalto', 'user') | list | length }}]
{{ ('<' ~ messages[0].role ~ '>') + messages[0].content.strip().upper() }}
"#;

    #[test]
    fn jinja_features_chat_templates_use() {
        let t = ChatTemplate::new(FEATURES, None, None).unwrap();
        let conversation = [
            ("system", "Sé \"brief\""),
            ("user", "  hi  "),
            ("assistant", "hello"),
        ];
        assert_eq!(
            render(&t, &conversation, true),
            "system=\"Sé \\\"brief\\\"\" turns=2\n\
             last={\"role\": \"assistant\", \"content\": \"hello\"}\n\
             year digits=4\n    \
             1/2 user: hi\n    \
             2/2 assistant: hello (last)\n\
             [][anon][2][1]\n\
             <system>SÉ \"BRIEF\""
        );
        let err = t
            .render(&msgs(&[("user", "/delete everything")]), true)
            .unwrap_err();
        assert!(
            matches!(&err, ChatTemplateError::Raised { message, .. }
                if message == "commands are not allowed: /delete everything"),
            "{err:?}"
        );
    }

    /// `{% break %}` and `{% continue %}` (Jinja's loopcontrols extension,
    /// which transformers turns on) need minijinja's `loop_controls` feature.
    #[test]
    fn loop_controls() {
        let source = "{% for m in messages %}\n\
                      {% if m.role == 'system' %}{% continue %}{% endif %}\n\
                      {% if m.content.startswith('STOP') %}{% break %}{% endif %}\n\
                      {{ m.role }}={{ m.content }};\n\
                      {% endfor %}";
        // Without the feature this fails to compile, saying so.
        let t = ChatTemplate::new(source, None, None).unwrap_or_else(|err| panic!("{err}"));
        let conversation = [
            ("system", "s"),
            ("user", "a"),
            ("assistant", "b"),
            ("user", "STOP now"),
            ("assistant", "never"),
        ];
        assert_eq!(render(&t, &conversation, true), "user=a;\nassistant=b;\n");
    }

    #[test]
    fn strftime_now_formats_local_time() {
        let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}", None, None).unwrap();
        let before = chrono::Local::now().format("%Y-%m-%d").to_string();
        let got = render(&t, &[], false);
        let after = chrono::Local::now().format("%Y-%m-%d").to_string();
        assert!(got == before || got == after, "{got}");
    }

    #[test]
    fn values_print_as_python_does() {
        let t = ChatTemplate::new(
            "{{ none }}|{{ true }}|{{ 1.0 }}|{{ 10 / 4 }}|{{ 1e20 }}|{{ 1e-5 }}|{{ [1, 'it\\'s', none] }}|{{ messages[0] }}|{{ add_generation_prompt }}|{{ tools }}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            render(&t, &[("user", "hi")], true),
            "None|True|1.0|2.5|1e+20|1e-05|[1, \"it's\", None]|{'role': 'user', 'content': 'hi'}|True|None"
        );
    }

    #[test]
    fn tojson_takes_hf_arguments() {
        let t = ChatTemplate::new(
            "{{ messages[0] | tojson(indent=2) }}|{{ 'é🙂' | tojson(ensure_ascii=true) }}|{{ [1, 2.5, none] | tojson(separators=(',', ':')) }}|{{ messages[0] | tojson(sort_keys=true) }}|{{ '<a & b>\\n' | tojson }}|{{ [[], {}] | tojson(indent=1) }}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            render(&t, &[("user", "hi")], true),
            "{\n  \"role\": \"user\",\n  \"content\": \"hi\"\n}|\"\\u00e9\\ud83d\\ude42\"|[1,2.5,null]|{\"content\": \"hi\", \"role\": \"user\"}|\"<a & b>\\n\"|[\n [],\n {}\n]"
        );
        let err = ChatTemplate::new("{{ nothing | tojson }}", None, None)
            .unwrap()
            .render(&[], true)
            .unwrap_err();
        assert!(err.to_string().contains("not JSON serializable"), "{err}");
    }

    #[test]
    fn whitespace_control_matches_jinja() {
        // trim_blocks, lstrip_blocks, a dropped final newline, \r\n read as \n.
        let t = ChatTemplate::new(
            "Hello\r\n    {% if true %}\r\n    X\n    {% endif %}\n  {# note #}\nEnd\n",
            None,
            None,
        )
        .unwrap();
        assert_eq!(render(&t, &[], true), "Hello\n    X\nEnd");
    }

    #[test]
    fn undefined_values_behave_as_in_jinja() {
        let t = ChatTemplate::new(
            "[{{ nope }}][{{ messages[0].nope }}][{{ messages[9] }}][{{ nope | length }}][{{ nope is defined }}][{% for x in nope %}x{% endfor %}][{{ pad_token }}]",
            None,
            None,
        )
        .unwrap();
        assert_eq!(render(&t, &[("user", "hi")], true), "[][][][0][False][][]");
        let err = ChatTemplate::new("a\n{{ nope.deeper }}", None, None)
            .unwrap()
            .render(&[], true)
            .unwrap_err();
        assert!(
            matches!(&err, ChatTemplateError::Render { line: Some(2), .. }),
            "{err:?}"
        );
    }

    #[test]
    fn generation_blocks_render_their_body() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.role == 'assistant' %}\n  {% generation %}\n{{ m.content }}\n  {%- endgeneration %}\n{% else %}{{ m.content }}|{% endif %}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            render(&t, &[("user", "q"), ("assistant", "a")], false),
            "q|a"
        );
    }

    #[test]
    fn extra_variables_reach_the_template() {
        let t = ChatTemplate::new("{{ pad_token }}{{ enable_thinking }}", None, None)
            .unwrap()
            .with_variable("pad_token", "<pad>")
            .with_variable("enable_thinking", false);
        assert_eq!(render(&t, &[], true), "<pad>False");
    }

    #[test]
    fn syntax_errors_are_caught_up_front_with_the_line() {
        let err = ChatTemplate::new("line one\n{% if %}\n", None, None).unwrap_err();
        match &err {
            ChatTemplateError::Syntax { line, .. } => assert_eq!(*line, Some(2)),
            other => panic!("expected Syntax, got {other:?}"),
        }
        assert!(err.to_string().contains("template line 2"), "{err}");
    }

    #[test]
    fn python_float_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e300, "1.5e+300"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (123456789.125, "123456789.125"),
            (-0.0, "-0.0"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (f, want) in cases {
            let mut got = String::new();
            push_python_float(&mut got, f, "nan", "inf");
            assert_eq!(got, want, "{f}");
        }
    }

    #[test]
    fn chat_template_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    fn write_config(dir: &tempfile::TempDir, json: &str) -> PathBuf {
        let path = dir.path().join("tokenizer_config.json");
        std::fs::write(&path, json).unwrap();
        path
    }

    #[test]
    fn config_with_string_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "pad_token": null,
            "chat_template": LLAMA3,
        });
        let path = write_config(&dir, &config.to_string());
        let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
        assert_eq!(t.bos_token(), Some("<|begin_of_text|>"));
        assert_eq!(t.eos_token(), Some("<|eot_id|>"));
        assert_eq!(t.source(), LLAMA3);
        assert_eq!(
            render(&t, &[("user", "Hi")], true),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn config_with_added_token_objects_and_other_special_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let added = |content: &str| {
            serde_json::json!({
                "__type": "AddedToken", "content": content, "lstrip": false,
                "normalized": false, "rstrip": false, "single_word": false,
            })
        };
        let config = serde_json::json!({
            "bos_token": added("<s>"),
            "eos_token": added("</s>"),
            "unk_token": added("<unk>"),
            "pad_token": "<pad>",
            "extra_special_tokens": {"image_token": "<image>"},
            "chat_template": "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ image_token }}|{{ sep_token is defined }}",
        });
        let path = write_config(&dir, &config.to_string());
        let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
        assert_eq!(t.bos_token(), Some("<s>"));
        assert_eq!(t.eos_token(), Some("</s>"));
        assert_eq!(render(&t, &[], true), "<s>|</s>|<unk>|<pad>|<image>|False");
    }

    #[test]
    fn config_list_form_picks_default() {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template": SMOLLM2},
            ],
            "eos_token": "<|im_end|>",
        });
        let path = write_config(&dir, &config.to_string());
        let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
        assert_eq!(
            render(&t, &[("user", "Hello!")], false),
            format!("{SMOL_SYSTEM}<|im_start|>user\nHello!<|im_end|>\n")
        );

        let config = serde_json::json!({
            "chat_template": [{"name": "tool_use", "template": "tools"}],
        });
        let path = write_config(&dir, &config.to_string());
        let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
        assert!(matches!(err, ChatTemplateError::Invalid { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(
            text.contains("default") && text.contains("tool_use"),
            "{text}"
        );
    }

    #[test]
    fn chat_template_jinja_beside_the_config_takes_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(
            &dir,
            r#"{"chat_template": "from json", "bos_token": "<s>"}"#,
        );
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "{{ bos_token }}from file\n",
        )
        .unwrap();
        let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
        assert_eq!(render(&t, &[], true), "<s>from file");
    }

    #[test]
    fn config_without_chat_template_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(&dir, r#"{"bos_token": "<s>", "chat_template": null}"#);
        let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
        assert!(matches!(err, ChatTemplateError::Missing { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("no chat_template"), "{text}");
    }

    #[test]
    fn malformed_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(&dir, r#"{"chat_template": "x",,}"#);
        let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
        assert!(matches!(err, ChatTemplateError::Json { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );

        let missing = dir.path().join("absent").join("tokenizer_config.json");
        let err = ChatTemplate::from_tokenizer_config(&missing).unwrap_err();
        assert!(matches!(err, ChatTemplateError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn bad_token_type_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(&dir, r#"{"chat_template": "x", "eos_token": 7}"#);
        let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
        assert!(matches!(err, ChatTemplateError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().contains("eos_token"), "{err}");
    }

    #[test]
    fn syntax_error_in_config_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "chat_template": "{% for m in messages %}\n{{ m.content }}\n{% endif %}\n",
        });
        let path = write_config(&dir, &config.to_string());
        let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
        match &err {
            ChatTemplateError::Syntax { origin, line, .. } => {
                assert_eq!(origin, &path.display().to_string());
                assert_eq!(*line, Some(3));
            }
            other => panic!("expected Syntax, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("template line 3"), "{text}");
    }
}
