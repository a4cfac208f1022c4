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
//!   body, as they do when no mask is asked for;
//! * dict literals written in the template iterate in the order they are
//!   written, as a Python dict does (minijinja's `preserve_order` feature;
//!   Llama Guard 3's template lists its categories `S1`..`S14` this way).
//!
//! Some templates show a message's content only when it is a list of typed
//! parts, `[{"type": "text", "text": ...}]` (Llama Guard 3 1B's reads
//! `message['content'] | selectattr('type', 'equalto', 'text')`; so do
//! vision models'): given a plain string they render the conversation
//! empty, silently. Such a template is recognized when it is compiled (a
//! probe message shows up in its output as parts and not as a string), and
//! every message's content is then passed to it as one text part.
//!
//! What still differs from Jinja2: `~` and `|string` write `none`/`true`
//! where Python writes `None`/`True`; Python's `'%s' % x` formatting is
//! missing (`|format` works); tuples print as lists; and
//! `{% break %}`/`{% continue %}` need minijinja's `loop_controls` feature
//! (without it such a template fails to compile, with an error that says
//! so).

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
    /// Contents are passed as a list of one text part (see the module docs).
    content_as_parts: bool,
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
        self.render_as(messages, add_generation_prompt, self.content_as_parts)
    }

    /// Renders a chat whose last message opens the assistant's answer, cut
    /// right after that message's content so the model continues it, as
    /// transformers' `apply_chat_template(..., continue_final_message=True)`
    /// does: rendered without the generation prompt, then cut after the
    /// last occurrence of the final content stripped of surrounding
    /// whitespace (keeping its leading whitespace's length when the template
    /// kept the content as it is). `Err` when the template does not show
    /// that content (it rewrites or drops it).
    pub fn render_continuing(
        &self,
        messages: &[ChatMessage<'_>],
    ) -> Result<String, ChatTemplateError> {
        let rendered = self.render(messages, false)?;
        let last = messages.last().map_or("", |m| m.content);
        let stripped = last.trim();
        let Some(at) = rendered.rfind(stripped) else {
            return Err(ChatTemplateError::Render {
                origin: self.origin.clone(),
                line: None,
                near: None,
                message: "the final assistant message does not appear in the rendered chat \
                          (the template changes it), so it cannot be continued"
                    .into(),
            });
        };
        let kept = last.trim_start();
        let end = if rendered[at..].starts_with(kept) {
            at + kept.len()
        } else {
            at + stripped.len()
        };
        Ok(rendered[..end].to_string())
    }

    /// Whether message contents reach the template as a list of typed parts
    /// rather than as strings (see the module docs).
    pub fn content_as_parts(&self) -> bool {
        self.content_as_parts
    }

    fn render_as(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
        content_as_parts: bool,
    ) -> Result<String, ChatTemplateError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let content = if content_as_parts {
                    Value::from(vec![Value::from_object(TextPart {
                        text: Value::from(m.content),
                    })])
                } else {
                    Value::from(m.content)
                };
                Value::from_object(MessageObject {
                    role: Value::from(m.role),
                    content,
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
        let mut template = ChatTemplate {
            source,
            compiled,
            origin,
            variables,
            env,
            content_as_parts: false,
        };
        template.content_as_parts = template.shows_only_parts();
        Ok(template)
    }

    /// Whether a probe message shows up in the template's output when its
    /// content is a list of text parts, and not when it is a string.
    fn shows_only_parts(&self) -> bool {
        const PROBE: &str = "safedrift-content-probe";
        let probe = [ChatMessage::new("user", PROBE)];
        let shows = |parts| {
            self.render_as(&probe, true, parts)
                .is_ok_and(|text| text.contains(PROBE))
        };
        !shows(false) && shows(true)
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

/// One part of a message's content, `{"type": "text", "text": ...}`, its
/// keys in a dict's order.
#[derive(Debug)]
struct TextPart {
    text: Value,
}

impl Object for TextPart {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "type" => Some(Value::from("text")),
            "text" => Some(self.text.clone()),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["type", "text"])
    }
}

mod python;
mod source;
use source::{
    describe, json_type, near, pick_default_template, rewrite_generation_tags, token_text,
};

use python::{
    is_sequence, length, python_formatter, raise_exception, strftime_now, tojson, wordcount,
    RaisedException,
};

#[cfg(test)]
mod tests;
