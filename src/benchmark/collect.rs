//! Reading benchmark files and collecting their prompts, checked.

use super::*;

#[derive(Default)]
pub(super) struct Collector {
    pub(super) prompts: Vec<Prompt>,
    /// id -> (file, line) of its first occurrence.
    pub(super) seen: HashMap<String, (String, u64)>,
}

pub(super) struct Entry<'a> {
    pub(super) file: &'a str,
    pub(super) line: u64,
    pub(super) id: &'a str,
    pub(super) category: &'a str,
    pub(super) text: &'a str,
    pub(super) benign: bool,
}

impl Collector {
    pub(super) fn push(&mut self, e: Entry<'_>) -> Result<()> {
        let file = e.file;
        let line = e.line;
        let text = normalize_text(e.text);
        if text.is_empty() {
            return Err(BenchmarkError::EmptyPrompt {
                file: file.to_owned(),
                line,
            });
        }
        let chars = text.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return Err(BenchmarkError::PromptTooLong {
                file: file.to_owned(),
                line,
                chars,
                limit: MAX_PROMPT_CHARS,
            });
        }
        let id = normalize_text(e.id);
        for (field, value) in [("prompt", &text), ("id", &id)] {
            if value.contains('\0') {
                return Err(BenchmarkError::NulChar {
                    file: file.to_owned(),
                    line,
                    field,
                });
            }
        }
        let mut category = snake_case(e.category);
        if category.is_empty() {
            category = UNCATEGORIZED.to_owned();
        }
        if let Some((first_file, first_line)) = self.seen.get(&id) {
            let first = if first_file == file {
                format!("line {first_line}")
            } else {
                format!("{first_file}:{first_line}")
            };
            return Err(BenchmarkError::DuplicateId {
                file: file.to_owned(),
                line,
                id,
                first,
            });
        }
        self.seen.insert(id.clone(), (file.to_owned(), line));
        self.prompts.push(Prompt {
            id,
            category,
            text,
            benign: e.benign,
            expected: Vec::new(),
            offdomain: false,
            target: None,
            attack: None,
        });
        Ok(())
    }

    /// Keeps `target` (normalized; a blank one is none) on the prompt
    /// pushed last.
    pub(super) fn set_target(&mut self, target: &str) {
        let target = normalize_text(target);
        if let Some(p) = self.prompts.last_mut() {
            p.target = (!target.is_empty() && !target.contains('\0')).then_some(target);
        }
    }

    pub(super) fn finish(self, name: String, spec: String, benign: bool) -> Benchmark {
        let sha256 = prompts_sha256(&self.prompts);
        Benchmark {
            name,
            spec,
            sha256,
            benign,
            prompts: self.prompts,
        }
    }
}

// ---------------------------------------------------------------------------
// Reading files

pub(super) fn show(path: &Path) -> String {
    path.display().to_string()
}

/// 1-based line of byte `offset`: one plus the number of `\n` before it.
pub(super) fn line_at(bytes: &[u8], offset: usize) -> u64 {
    1 + bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64
}

/// Reads a whole file as text: size-checked before reading, NUL bytes and
/// invalid UTF-8 refused, a leading BOM stripped, line endings made LF.
pub(super) fn read_text(path: &Path) -> Result<String> {
    let file = show(path);
    let unreadable = |source: io::Error| BenchmarkError::Unreadable {
        file: file.clone(),
        source,
    };
    let meta = fs::metadata(path).map_err(unreadable)?;
    if meta.is_dir() {
        return Err(unreadable(io::Error::other(
            "is a directory, expected a file",
        )));
    }
    let too_large = |size: u64| BenchmarkError::TooLarge {
        file: file.clone(),
        size,
        limit: MAX_FILE_BYTES,
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        // Grew after the metadata check, or a special file.
        return Err(too_large(bytes.len() as u64));
    }
    decode(&file, bytes)
}

pub(super) fn decode(file: &str, bytes: Vec<u8>) -> Result<String> {
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(BenchmarkError::Binary {
            file: file.to_owned(),
            line: line_at(&bytes, offset),
            offset: offset as u64,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        BenchmarkError::InvalidUtf8 {
            file: file.to_owned(),
            line: line_at(e.as_bytes(), offset),
            offset: offset as u64,
        }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    Ok(normalize_newlines(text))
}
