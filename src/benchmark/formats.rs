//! One loader per benchmark format.

use super::*;

pub(super) fn load_hex_phi(dir: &Path, benign: bool, out: &mut Collector) -> Result<()> {
    let dir_name = show(dir);
    let meta = fs::metadata(dir).map_err(|source| BenchmarkError::Unreadable {
        file: dir_name.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(BenchmarkError::Unreadable {
            file: dir_name,
            source: io::Error::other(
                "not a directory (hex-phi expects the directory holding category_N.csv)",
            ),
        });
    }
    let mut found_any = false;
    for (i, category) in HEX_PHI_CATEGORIES.iter().enumerate() {
        let n = i + 1;
        let path = dir.join(format!("category_{n}.csv"));
        match fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(BenchmarkError::Unreadable {
                    file: show(&path),
                    source,
                })
            }
        }
        found_any = true;
        let file = show(&path);
        let text = read_text(&path)?;
        let rows = csv_rows(&file, &text)?;
        if rows.is_empty() {
            return Err(BenchmarkError::NoPrompts { file });
        }
        for (r, row) in rows.iter().enumerate() {
            if row.fields.len() != 1 {
                return Err(BenchmarkError::WrongColumns {
                    file,
                    line: row.line,
                    expected: 1,
                    found: row.fields.len(),
                });
            }
            out.push(Entry {
                file: &file,
                line: row.line,
                id: &format!("c{n}-{:03}", r + 1),
                category,
                text: &row.fields[0],
                benign,
            })?;
        }
    }
    if !found_any {
        return Err(BenchmarkError::NoCategoryFiles { file: dir_name });
    }
    Ok(())
}

/// `{prefix}{id}`, or `{row_prefix}{row}` when `id` is blank.
pub(super) fn id_or_row(prefix: &str, id: &str, row: usize, row_prefix: &str) -> String {
    let id = id.trim();
    if id.is_empty() {
        format!("{row_prefix}{row}")
    } else {
        format!("{prefix}{id}")
    }
}

pub(super) fn load_advbench(path: &Path, benign: bool, out: &mut Collector) -> Result<()> {
    let t = Table::read(path, &["goal", "target"])?;
    for (r, row) in t.rows.iter().enumerate() {
        out.push(Entry {
            file: &t.file,
            line: row.line,
            id: &format!("advbench-{}", r + 1),
            category: "advbench",
            text: t.get(row, "goal"),
            benign,
        })?;
        out.set_target(t.get(row, "target"));
    }
    Ok(())
}

pub(super) fn load_harmbench(path: &Path, benign: bool, out: &mut Collector) -> Result<()> {
    let t = Table::read(path, &["behavior", "semanticcategory", "behaviorid"])?;
    for (r, row) in t.rows.iter().enumerate() {
        let behavior = t.get(row, "behavior");
        if normalize_text(behavior).is_empty() {
            return Err(BenchmarkError::EmptyPrompt {
                file: t.file.clone(),
                line: row.line,
            });
        }
        let context = t.get(row, "contextstring");
        let text = if context.trim().is_empty() {
            behavior.to_owned()
        } else {
            format!("{}\n\n---\n\n{}", context.trim(), behavior.trim())
        };
        out.push(Entry {
            file: &t.file,
            line: row.line,
            id: &id_or_row("", t.get(row, "behaviorid"), r + 1, "harmbench-"),
            category: t.get(row, "semanticcategory"),
            text: &text,
            benign,
        })?;
    }
    Ok(())
}

pub(super) fn load_jbb(path: &Path, benign: bool, out: &mut Collector) -> Result<()> {
    let t = Table::read(path, &["goal", "category"])?;
    for (r, row) in t.rows.iter().enumerate() {
        out.push(Entry {
            file: &t.file,
            line: row.line,
            id: &id_or_row("jbb-", t.get(row, "index"), r + 1, "jbb-"),
            category: t.get(row, "category"),
            text: t.get(row, "goal"),
            benign,
        })?;
        out.set_target(t.get(row, "target"));
    }
    Ok(())
}

pub(super) fn load_xstest(path: &Path, benign: bool, out: &mut Collector) -> Result<()> {
    let t = Table::read(path, &["id", "prompt", "type", "label"])?;
    for (r, row) in t.rows.iter().enumerate() {
        let label = t.get(row, "label");
        let safe = match label.trim().to_lowercase().as_str() {
            "safe" => true,
            "unsafe" => false,
            _ => {
                return Err(BenchmarkError::InvalidValue {
                    file: t.file.clone(),
                    line: row.line,
                    field: "label",
                    value: format!("{:?}", label.trim()),
                    expected: "\"safe\" or \"unsafe\"",
                })
            }
        };
        out.push(Entry {
            file: &t.file,
            line: row.line,
            id: &id_or_row("xstest-", t.get(row, "id"), r + 1, "xstest-"),
            category: t.get(row, "type"),
            text: t.get(row, "prompt"),
            benign: benign || safe,
        })?;
    }
    Ok(())
}

pub(super) fn load_strongreject(path: &Path, benign: bool, out: &mut Collector) -> Result<()> {
    let t = Table::read(path, &["category", "forbidden_prompt"])?;
    for (r, row) in t.rows.iter().enumerate() {
        out.push(Entry {
            file: &t.file,
            line: row.line,
            id: &format!("strongreject-{}", r + 1),
            category: t.get(row, "category"),
            text: t.get(row, "forbidden_prompt"),
            benign,
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// JSON lines

#[derive(Deserialize)]
pub(super) struct JsonlRecord {
    pub(super) prompt: String,
    #[serde(default)]
    pub(super) id: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) category: Option<String>,
    #[serde(default)]
    pub(super) benign: Option<bool>,
    /// Accepted answers of a checkable question: a string or a list.
    #[serde(default)]
    pub(super) expected: Option<serde_json::Value>,
    /// A harmless off-domain question, judged for misalignment too.
    #[serde(default)]
    pub(super) offdomain: Option<serde_json::Value>,
    /// A compliant opening of an answer, for `prefill:K` attacks.
    #[serde(default)]
    pub(super) target: Option<String>,
}

pub(super) fn parse_jsonl(file: &str, text: &str, benign: bool, out: &mut Collector) -> Result<()> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = normalize_newlines(text);
    for (i, raw) in text.split('\n').enumerate() {
        let line = i as u64 + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let json_err = |e: serde_json::Error| BenchmarkError::Json {
            file: file.to_owned(),
            line,
            message: e.to_string(),
        };
        // Via a map first: serde's derived structs would also accept an array.
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(raw).map_err(json_err)?;
        let rec: JsonlRecord =
            serde_json::from_value(serde_json::Value::Object(object)).map_err(json_err)?;
        let id = match rec.id {
            None | Some(serde_json::Value::Null) => format!("jsonl-{line}"),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => format!("jsonl-{line}"),
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(BenchmarkError::InvalidValue {
                    file: file.to_owned(),
                    line,
                    field: "id",
                    value: other.to_string(),
                    expected: "a string or a number",
                })
            }
        };
        let bad_expected = |value: &serde_json::Value| BenchmarkError::InvalidValue {
            file: file.to_owned(),
            line,
            field: "expected",
            value: value.to_string().chars().take(80).collect(),
            expected: "a non-empty string or a list of them",
        };
        let expected: Vec<String> = match &rec.expected {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                vec![s.trim().to_string()]
            }
            Some(serde_json::Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|v| match v {
                    serde_json::Value::String(s) if !s.trim().is_empty() => {
                        Ok(s.trim().to_string())
                    }
                    other => Err(bad_expected(other)),
                })
                .collect::<Result<_>>()?,
            Some(other) => return Err(bad_expected(other)),
        };
        let offdomain = match &rec.offdomain {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(other) => {
                return Err(BenchmarkError::InvalidValue {
                    file: file.to_owned(),
                    line,
                    field: "offdomain",
                    value: other.to_string().chars().take(80).collect(),
                    expected: "true or false",
                })
            }
        };
        out.push(Entry {
            file,
            line,
            id: &id,
            category: rec.category.as_deref().unwrap_or(UNCATEGORIZED),
            text: &rec.prompt,
            // A question with a checkable answer, or an off-domain one, is
            // a harmless one.
            benign: benign || rec.benign.unwrap_or(false) || !expected.is_empty() || offdomain,
        })?;
        if let Some(p) = out.prompts.last_mut() {
            p.expected = expected;
            p.offdomain = offdomain;
        }
        out.set_target(rec.target.as_deref().unwrap_or_default());
    }
    Ok(())
}
