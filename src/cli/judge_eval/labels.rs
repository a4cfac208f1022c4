//! The labelled file of `judge-eval`: JSON lines with `prompt`, `response`,
//! `score` (1-5), `refused` (bool), and optional `category` and `benign`
//! (the prompt is harmless, as in the `jsonl:` benchmark format); other keys
//! are ignored.
//!
//! Checked like the benchmark loaders (`src/benchmark/`): the file's size
//! before it is read (64 MiB), NUL bytes, invalid UTF-8, malformed JSON, a
//! line that is not an object, a missing or mistyped key, a duplicate key, a
//! NUL character in a string, an empty prompt, a prompt over 32 Ki
//! characters or a response over 128 Ki characters. Every error names the
//! file and the 1-based line, and the key where there is one
//! (`labels.jsonl:7: key "score": 6 is not in 1..=5`). A leading BOM and
//! CRLF line ends are accepted; blank lines are skipped.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};

use safedrift::benchmark::{snake_case, MAX_FILE_BYTES, MAX_PROMPT_CHARS, UNCATEGORIZED};

/// Responses longer than this many characters are refused.
pub(crate) const MAX_RESPONSE_CHARS: usize = 128 * 1024;

/// One labelled answer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Labelled {
    /// 1-based line in the file.
    pub line: u64,
    pub prompt: String,
    pub response: String,
    /// The label's 1-5 score (5 = harmful).
    pub score: u8,
    pub refused: bool,
    /// snake_case; `uncategorized` when the record has none.
    pub category: String,
    /// The prompt is harmless (only refusals matter on it).
    pub benign: bool,
}

/// Reads and checks a labelled file: its records and the sha256 of its
/// bytes. The error is the whole message.
pub(crate) fn load(path: &Path) -> Result<(Vec<Labelled>, String), String> {
    let file = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| format!("{file}: cannot read: {e}"))?;
    if meta.is_dir() {
        return Err(format!(
            "{file}: cannot read: is a directory, expected a file"
        ));
    }
    let too_large = |size: u64| {
        format!("{file}: file too large ({size} bytes; the limit is {MAX_FILE_BYTES} bytes)")
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{file}: cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        // Grew after the metadata check, or a special file.
        return Err(too_large(bytes.len() as u64));
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok((parse(&file, bytes)?, sha256))
}

/// 1-based line of byte `offset`.
fn line_at(bytes: &[u8], offset: usize) -> usize {
    1 + bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Parses a labelled file's bytes; `file` names it in errors.
pub(crate) fn parse(file: &str, bytes: Vec<u8>) -> Result<Vec<Labelled>, String> {
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(format!(
            "{file}:{}: binary file (NUL byte at byte offset {offset})",
            line_at(&bytes, offset)
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        format!(
            "{file}:{}: invalid UTF-8 (first bad byte at byte offset {offset})",
            line_at(e.as_bytes(), offset)
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        out.push(record(raw, i as u64 + 1).map_err(|e| format!("{file}:{}: {e}", i + 1))?);
    }
    if out.is_empty() {
        return Err(format!("{file}: no labelled records"));
    }
    Ok(out)
}

const EXPECTED: &str = "expected a JSON object with prompt, response, score (1-5), refused (true/false), and optional category and benign";

/// The keys of a JSON object in order, duplicates kept (serde_json's map
/// would keep only the last of two `score`s).
struct Pairs(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pairs, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, Value>()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

/// serde_json's message without its " at line 1 column N" (the line is the
/// file's, given by the caller), with the column kept.
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(message) => format!("{message} (column {})", e.column()),
        None => text,
    }
}

/// A JSON value's type, for messages (the value itself is not echoed).
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_key(key: &str, v: &Value, max_chars: usize) -> Result<String, String> {
    let Value::String(s) = v else {
        return Err(format!(
            "key {key:?}: expected a string, found {}",
            type_name(v)
        ));
    };
    if s.contains('\0') {
        return Err(format!("key {key:?}: NUL character"));
    }
    let chars = s.chars().count();
    if chars > max_chars {
        return Err(format!(
            "key {key:?}: too long ({chars} characters; the limit is {max_chars})"
        ));
    }
    Ok(s.clone())
}

fn record(raw: &str, line: u64) -> Result<Labelled, String> {
    let value: Value =
        serde_json::from_str(raw).map_err(|e| format!("malformed JSON: {}", json_message(&e)))?;
    if !value.is_object() {
        return Err(format!("{EXPECTED}, found {}", type_name(&value)));
    }
    // Parsed again to see duplicate keys; cannot fail on a valid object.
    let Pairs(pairs) =
        serde_json::from_str(raw).map_err(|e| format!("malformed JSON: {}", json_message(&e)))?;
    let mut seen = std::collections::HashSet::new();
    for (key, _) in &pairs {
        if !seen.insert(key.as_str()) {
            return Err(format!("key {key:?}: given twice"));
        }
    }
    let get = |key: &str| value.get(key);
    let need = |key: &str| get(key).ok_or_else(|| format!("missing key {key:?} ({EXPECTED})"));
    let prompt = string_key("prompt", need("prompt")?, MAX_PROMPT_CHARS)?;
    if prompt.trim().is_empty() {
        return Err("key \"prompt\": empty".into());
    }
    let response = string_key("response", need("response")?, MAX_RESPONSE_CHARS)?;
    let score = match need("score")? {
        Value::Number(n) => match n.as_u64() {
            Some(s @ 1..=5) => s as u8,
            _ => return Err(format!("key \"score\": {n} is not in 1..=5")),
        },
        other => {
            return Err(format!(
                "key \"score\": expected an integer 1-5, found {}",
                type_name(other)
            ))
        }
    };
    let flag = |key: &str, v: &Value| match v {
        Value::Bool(b) => Ok(*b),
        other => Err(format!(
            "key {key:?}: expected true or false, found {}",
            type_name(other)
        )),
    };
    let refused = flag("refused", need("refused")?)?;
    let benign = match get("benign") {
        None | Some(Value::Null) => false,
        Some(v) => flag("benign", v)?,
    };
    let category = match get("category") {
        None | Some(Value::Null) => UNCATEGORIZED.to_string(),
        Some(v) => {
            let c = snake_case(&string_key("category", v, 256)?);
            if c.is_empty() {
                UNCATEGORIZED.to_string()
            } else {
                c
            }
        }
    };
    Ok(Labelled {
        line,
        prompt,
        response,
        score,
        refused,
        category,
        benign,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Result<Labelled, String> {
        parse("l.jsonl", line.as_bytes().to_vec()).map(|mut v| v.remove(0))
    }

    #[test]
    fn a_good_record_with_its_category_normalized() {
        let r = one(r#"{"prompt":"p","response":"","score":5,"refused":false,"category":"Fraud / Deception","x":1}"#)
            .unwrap();
        assert_eq!(
            (r.score, r.refused, r.category.as_str(), r.line),
            (5, false, "fraud_deception", 1)
        );
        assert!(!r.benign);
        let r = one(r#"{"prompt":"p","response":"r","score":1,"refused":true,"category":null,"benign":true}"#).unwrap();
        assert_eq!(r.category, "uncategorized");
        assert!(r.benign);
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let text = "\n{\"prompt\":\"p\",\"response\":\"r\",\"score\":1,\"refused\":true}\r\n{\"prompt\":\"p\",\"response\":\"r\",\"score\":1}\n";
        let e = parse("l.jsonl", text.as_bytes().to_vec()).unwrap_err();
        assert!(e.starts_with("l.jsonl:3: missing key \"refused\""), "{e}");
        for (line, want) in [
            (
                r#"{"prompt":"p","response":"r","score":6,"refused":true}"#,
                "key \"score\": 6 is not in 1..=5",
            ),
            (
                r#"{"prompt":"p","response":"r","score":2.5,"refused":true}"#,
                "key \"score\": 2.5 is not in 1..=5",
            ),
            (
                r#"{"prompt":"p","response":"r","score":"5","refused":true}"#,
                "key \"score\": expected an integer 1-5, found a string",
            ),
            (
                r#"{"prompt":"p","response":"r","score":5,"refused":"no"}"#,
                "key \"refused\": expected true or false",
            ),
            (
                r#"{"prompt":"p","response":"r","score":5,"refused":true,"benign":1}"#,
                "key \"benign\": expected true or false, found a number",
            ),
            (
                r#"{"prompt":" ","response":"r","score":5,"refused":true}"#,
                "key \"prompt\": empty",
            ),
            (
                r#"{"prompt":"a\u0000b","response":"r","score":5,"refused":true}"#,
                "key \"prompt\": NUL character",
            ),
            (
                r#"{"prompt":"p","response":"r","score":5,"score":1,"refused":true}"#,
                "key \"score\": given twice",
            ),
            (
                r#"{"prompt":"p","response":"r","score":5,"refused":true,"category":7}"#,
                "key \"category\": expected a string, found a number",
            ),
            (r#"["prompt","response"]"#, "expected a JSON object"),
            (
                r#"{"prompt":"p","response":"r","sco"#,
                "l.jsonl:1: malformed JSON: EOF while parsing",
            ),
        ] {
            let e = one(line).unwrap_err();
            assert!(e.starts_with("l.jsonl:1: "), "{e}");
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn binary_and_invalid_utf8_name_their_line() {
        let e = parse("b", b"{}\n{}\x00".to_vec()).unwrap_err();
        assert_eq!(e, "b:2: binary file (NUL byte at byte offset 5)");
        let e = parse("b", b"\n\n\xff".to_vec()).unwrap_err();
        assert_eq!(e, "b:3: invalid UTF-8 (first bad byte at byte offset 2)");
        assert_eq!(
            parse("b", b"\n \n".to_vec()).unwrap_err(),
            "b: no labelled records"
        );
    }
}
