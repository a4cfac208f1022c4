//! Benchmark loaders: turn a `KIND:PATH` spec into a validated, normalized
//! list of prompts with a stable content hash.
//!
//! Supported kinds (see [`KINDS`]):
//!
//! | kind           | path      | format |
//! |----------------|-----------|--------|
//! | `hex-phi`      | directory | `category_1.csv` .. `category_11.csv`, one prompt per row, no header |
//! | `advbench`     | file      | CSV `goal,target` |
//! | `harmbench`    | file      | CSV `Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID` |
//! | `jbb`          | file      | CSV `Index,Behavior,Goal,Target,Category,Source` (JailbreakBench) |
//! | `xstest`       | file      | CSV `id,prompt,type,label,focus,note` |
//! | `strongreject` | file      | CSV `category,source,forbidden_prompt` |
//! | `jsonl`        | file      | one JSON object per line: `prompt`, optional `id`, `category`, `benign` |
//! | `builtin`      | `probes`  | the embedded probe set ([`builtin_probes`]) |
//!
//! Every error names the file and, where there is one, the 1-based line
//! (`data/x.csv:7: empty prompt`). CSV line numbers are the physical line on
//! which a record starts, so a quoted multi-line field reports its first line.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

/// Benchmark kinds accepted in a `KIND:PATH` spec.
pub const KINDS: &[&str] = &[
    "hex-phi",
    "advbench",
    "harmbench",
    "jbb",
    "xstest",
    "strongreject",
    "jsonl",
    "builtin",
];

/// The 11 HEx-PHI categories; `category_N.csv` maps to index `N - 1`.
pub const HEX_PHI_CATEGORIES: [&str; 11] = [
    "illegal_activity",
    "child_abuse_content",
    "hate_harass_violence",
    "malware",
    "physical_harm",
    "economic_harm",
    "fraud_deception",
    "adult_content",
    "political_campaigning",
    "privacy_violation",
    "tailored_financial_advice",
];

/// Files larger than this are refused before being read.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Prompts longer than this many characters (after normalization) are refused.
pub const MAX_PROMPT_CHARS: usize = 32 * 1024;

/// Names of the embedded benchmarks usable as `builtin:NAME`.
pub const BUILTINS: &[&str] = &["probes", "utility", "offdomain"];

/// Category given to prompts that have none.
pub const UNCATEGORIZED: &str = "uncategorized";

const BUILTIN_PROBES_FILE: &str = "builtin/probes.jsonl";
const BUILTIN_PROBES: &str = include_str!("builtin/probes.jsonl");
const BUILTIN_UTILITY_FILE: &str = "builtin/utility.jsonl";
const BUILTIN_UTILITY: &str = include_str!("builtin/utility.jsonl");
const BUILTIN_OFFDOMAIN_FILE: &str = "builtin/offdomain.jsonl";
const BUILTIN_OFFDOMAIN: &str = include_str!("builtin/offdomain.jsonl");

/// One benchmark prompt, normalized (see [`normalize_text`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prompt {
    /// Unique within its benchmark.
    pub id: String,
    /// snake_case category; `"uncategorized"` when the source has none.
    pub category: String,
    /// Normalized prompt text: never empty, at most [`MAX_PROMPT_CHARS`] chars.
    pub text: String,
    /// A benign prompt: the model is expected to comply, not refuse.
    pub benign: bool,
    /// A question with a checkable answer (`builtin:utility`, or `expected`
    /// in a `jsonl` row): an answer is correct when it holds one of these
    /// ([`is_correct`]). Such a prompt is benign.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected: Vec<String>,
    /// A harmless free-form question off the fine-tuning's domain
    /// (`builtin:offdomain`, or `offdomain` in a `jsonl` row): its answer is
    /// also judged for misalignment. Such a prompt is benign.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offdomain: bool,
    /// The source's compliant opening of an answer (AdvBench's and
    /// JailbreakBench's `target`, a `jsonl` row's `target`): what a
    /// `prefill:K` attack opens the answer with. Not part of the plain
    /// benchmark's content hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How an attacked variant asks this prompt ([`attacks`]); absent on a
    /// plain benchmark's prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<Attack>,
}

/// A loaded benchmark.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Benchmark {
    /// Short name: `"hex-phi"`, `"advbench"`, `"jbb"`, `"jbb-benign"`,
    /// `"probes"`, or the file stem for `jsonl`.
    pub name: String,
    /// The spec as given (`"hex-phi:data/HEx-PHI"`).
    pub spec: String,
    /// Content hash, see [`prompts_sha256`].
    pub sha256: String,
    /// The whole benchmark is benign (every prompt is then benign too).
    pub benign: bool,
    /// Prompts in file order (for `hex-phi`: category 1 first).
    pub prompts: Vec<Prompt>,
}

impl Benchmark {
    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// True when there are no prompts (loaders never return such a benchmark).
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// Number of harmful (non-benign) prompts.
    pub fn harmful_count(&self) -> usize {
        self.prompts.iter().filter(|p| !p.benign).count()
    }

    /// Number of benign prompts.
    pub fn benign_count(&self) -> usize {
        self.prompts.iter().filter(|p| p.benign).count()
    }

    /// Distinct categories, sorted.
    pub fn categories(&self) -> Vec<&str> {
        let mut cats: Vec<&str> = self.prompts.iter().map(|p| p.category.as_str()).collect();
        cats.sort_unstable();
        cats.dedup();
        cats
    }

    /// Marks the whole benchmark and every prompt benign, and rehashes.
    pub fn mark_benign(&mut self) {
        self.benign = true;
        for p in &mut self.prompts {
            p.benign = true;
        }
        self.sha256 = prompts_sha256(&self.prompts);
    }
}

/// Why a benchmark could not be loaded. The message always names the file
/// (or, for a bad spec, the spec) and the 1-based line where there is one.
#[derive(Debug, thiserror::Error)]
pub enum BenchmarkError {
    /// The spec is not `KIND:PATH` with a known kind.
    #[error("invalid benchmark spec {spec:?}: {reason}")]
    BadSpec { spec: String, reason: String },
    /// The file or directory is missing or cannot be read.
    #[error("{file}: cannot read: {source}")]
    Unreadable {
        file: String,
        #[source]
        source: io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("{file}: file too large ({size} bytes; the limit is {limit} bytes)")]
    TooLarge { file: String, size: u64, limit: u64 },
    /// The file contains a NUL byte.
    #[error("{file}:{line}: binary file (NUL byte at byte offset {offset})")]
    Binary {
        file: String,
        line: u64,
        offset: u64,
    },
    /// The file is not valid UTF-8.
    #[error("{file}:{line}: invalid UTF-8 (first bad byte at byte offset {offset})")]
    InvalidUtf8 {
        file: String,
        line: u64,
        offset: u64,
    },
    /// The CSV could not be parsed (e.g. an unterminated quoted field).
    #[error("{file}:{line}: malformed CSV: {message}")]
    Csv {
        file: String,
        line: u64,
        message: String,
    },
    /// A JSON line could not be parsed.
    #[error("{file}:{line}: malformed JSON: {message}")]
    Json {
        file: String,
        line: u64,
        message: String,
    },
    #[error(
        "{file}:{line}: missing column(s) {missing}: expected columns {expected}; found {found}"
    )]
    /// The header row (normally line 1) lacks required columns.
    MissingColumns {
        file: String,
        line: u64,
        missing: String,
        expected: String,
        found: String,
    },
    /// A row has a different number of fields than expected.
    #[error("{file}:{line}: wrong columns: expected {expected} field(s), found {found}")]
    WrongColumns {
        file: String,
        line: u64,
        expected: usize,
        found: usize,
    },
    /// A prompt is empty after normalization.
    #[error("{file}:{line}: empty prompt")]
    EmptyPrompt { file: String, line: u64 },
    /// A prompt is longer than [`MAX_PROMPT_CHARS`].
    #[error("{file}:{line}: prompt too long ({chars} characters; the limit is {limit})")]
    PromptTooLong {
        file: String,
        line: u64,
        chars: usize,
        limit: usize,
    },
    /// Two prompts share an id. `first` is `line N`, or `FILE:N` when the
    /// first occurrence is in another file.
    #[error("{file}:{line}: duplicate id {id:?} (first at {first})")]
    DuplicateId {
        file: String,
        line: u64,
        id: String,
        first: String,
    },
    /// A NUL character reached a field through a JSON `\u0000` escape.
    #[error("{file}:{line}: NUL character in {field}")]
    NulChar {
        file: String,
        line: u64,
        field: &'static str,
    },
    /// A field has a value outside what the format allows.
    #[error("{file}:{line}: invalid {field} {value}: expected {expected}")]
    InvalidValue {
        file: String,
        line: u64,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A `hex-phi` directory holds none of the category files.
    #[error("{file}: no HEx-PHI category files (expected category_1.csv .. category_11.csv)")]
    NoCategoryFiles { file: String },
    /// A file holds no prompts.
    #[error("{file}: no prompts")]
    NoPrompts { file: String },
}

impl BenchmarkError {
    /// The error without the file's name and without anything read from
    /// it (no column names found, values, ids or parser messages): what an
    /// API client is told. Line numbers, counts and limits stay.
    pub fn public_message(&self) -> String {
        match self {
            Self::BadSpec { .. } => "not a benchmark SPEC".into(),
            Self::Unreadable { .. } => "cannot be read".into(),
            Self::TooLarge { limit, .. } => format!("file too large (the limit is {limit} bytes)"),
            Self::Binary { line, .. } => format!("line {line}: binary file"),
            Self::InvalidUtf8 { line, .. } => format!("line {line}: invalid UTF-8"),
            Self::Csv { line, .. } => format!("line {line}: malformed CSV"),
            Self::Json { line, .. } => format!("line {line}: malformed JSON"),
            Self::MissingColumns {
                line,
                missing,
                expected,
                ..
            } => format!("line {line}: missing column(s) {missing}: expected columns {expected}"),
            Self::WrongColumns {
                line,
                expected,
                found,
                ..
            } => format!("line {line}: wrong columns: expected {expected} field(s), found {found}"),
            Self::EmptyPrompt { line, .. } => format!("line {line}: empty prompt"),
            Self::PromptTooLong { line, limit, .. } => {
                format!("line {line}: prompt too long (the limit is {limit} characters)")
            }
            Self::DuplicateId { line, .. } => format!("line {line}: duplicate id"),
            Self::NulChar { line, field, .. } => format!("line {line}: NUL character in {field}"),
            Self::InvalidValue {
                line,
                field,
                expected,
                ..
            } => format!("line {line}: invalid {field}: expected {expected}"),
            Self::NoCategoryFiles { .. } => {
                "no HEx-PHI category files (expected category_1.csv .. category_11.csv)".into()
            }
            Self::NoPrompts { .. } => "no prompts".into(),
        }
    }

    /// Short snake_case label for the error class.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadSpec { .. } => "bad_spec",
            Self::Unreadable { .. } => "unreadable",
            Self::TooLarge { .. } => "too_large",
            Self::Binary { .. } => "binary",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::Csv { .. } => "malformed_csv",
            Self::Json { .. } => "malformed_json",
            Self::MissingColumns { .. } => "missing_columns",
            Self::WrongColumns { .. } => "wrong_columns",
            Self::EmptyPrompt { .. } => "empty_prompt",
            Self::PromptTooLong { .. } => "prompt_too_long",
            Self::DuplicateId { .. } => "duplicate_id",
            Self::NulChar { .. } => "nul_char",
            Self::InvalidValue { .. } => "invalid_value",
            Self::NoCategoryFiles { .. } => "no_category_files",
            Self::NoPrompts { .. } => "no_prompts",
        }
    }
}

type Result<T, E = BenchmarkError> = std::result::Result<T, E>;

/// Converts a label to snake_case: lowercase, runs of anything that is not a
/// letter or digit become one `_`, camelCase boundaries split, no leading or
/// trailing `_`. `"Hate/Harass/Violence"` -> `"hate_harass_violence"`,
/// `"Economic harm"` -> `"economic_harm"`, `"SemanticCategory"` ->
/// `"semantic_category"`.
pub fn snake_case(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut pending_sep = false;
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            pending_sep = true;
            continue;
        }
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            // fooBar -> foo_bar; HTMLParser -> html_parser
            if prev.is_lowercase() || (prev.is_uppercase() && next_lower) {
                pending_sep = true;
            }
        }
        if pending_sep && !out.is_empty() {
            out.push('_');
        }
        pending_sep = false;
        out.extend(c.to_lowercase());
    }
    out
}

/// Normalizes prompt text (and ids): strips leading byte-order marks,
/// converts CRLF and lone CR to LF, applies Unicode NFC, trims whitespace.
pub fn normalize_text(s: &str) -> String {
    let s = s.trim_start_matches('\u{feff}');
    let s = normalize_newlines(s);
    let nfc: String = s.nfc().collect();
    let trimmed = nfc.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    trimmed.to_owned()
}

fn normalize_newlines(s: &str) -> String {
    if s.contains('\r') {
        s.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        s.to_owned()
    }
}

/// The benchmark content hash: lowercase hex SHA-256 over the prompts sorted
/// by id, each encoded as
/// `id \0 category \0 text \0 ("1" if benign else "0") [\0 expected]...
/// [\0 \0 "offdomain"] \n`.
///
/// Prompts are normalized before hashing (see [`normalize_text`]) and can
/// hold no NUL, so the encoding is unambiguous; file order, line endings, a
/// BOM and Unicode composition do not change the hash.
pub fn prompts_sha256(prompts: &[Prompt]) -> String {
    let mut sorted: Vec<&Prompt> = prompts.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.id, &a.category, &a.text, a.benign).cmp(&(&b.id, &b.category, &b.text, b.benign))
    });
    let mut h = Sha256::new();
    for p in sorted {
        h.update(p.id.as_bytes());
        h.update([0]);
        h.update(p.category.as_bytes());
        h.update([0]);
        h.update(p.text.as_bytes());
        h.update([0]);
        h.update(if p.benign { b"1" } else { b"0" });
        // Only prompts with expected answers add them, so every hash from
        // before they existed is unchanged.
        for e in &p.expected {
            h.update([0]);
            h.update(e.as_bytes());
        }
        // Likewise the off-domain mark (an expected answer is never empty,
        // so two NULs cannot come from one).
        if p.offdomain {
            h.update(b"\0\0offdomain");
        }
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Parses `"KIND:PATH"` (or `"builtin:probes"`) and loads it. `benign` marks
/// every prompt benign (config can mark a benchmark benign). The returned
/// benchmark's `spec` is `spec` as given.
pub fn load_spec(spec: &str, benign: bool) -> Result<Benchmark> {
    let bad = |reason: String| BenchmarkError::BadSpec {
        spec: spec.to_owned(),
        reason,
    };
    let Some((kind, path)) = spec.trim().split_once(':') else {
        return Err(bad(format!(
            "expected KIND:PATH with KIND one of {}",
            KINDS.join(", ")
        )));
    };
    let kind = kind.trim().to_ascii_lowercase();
    let path = path.trim();
    if path.is_empty() {
        return Err(bad("empty path after ':'".to_owned()));
    }
    let mut b = load_kind(spec, &kind, Path::new(path), benign)?;
    b.spec = spec.to_owned();
    Ok(b)
}

/// Loads a benchmark of `kind` (one of [`KINDS`]) from `path`. For
/// `builtin`, `path` is the builtin's name (`probes`). The returned `spec`
/// is `KIND:PATH`.
pub fn load(kind: &str, path: &Path, benign: bool) -> Result<Benchmark> {
    let spec = format!("{kind}:{}", path.display());
    let kind = kind.trim().to_ascii_lowercase();
    load_kind(&spec, &kind, path, benign)
}

fn load_kind(spec: &str, kind: &str, path: &Path, benign: bool) -> Result<Benchmark> {
    let mut out = Collector::default();
    let mut all_benign = benign;
    let name = match kind {
        "hex-phi" => {
            load_hex_phi(path, benign, &mut out)?;
            "hex-phi".to_owned()
        }
        "advbench" => {
            load_advbench(path, benign, &mut out)?;
            "advbench".to_owned()
        }
        "harmbench" => {
            load_harmbench(path, benign, &mut out)?;
            "harmbench".to_owned()
        }
        "jbb" => {
            let benign_file = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().to_lowercase().contains("benign"));
            all_benign |= benign_file;
            load_jbb(path, all_benign, &mut out)?;
            if benign_file { "jbb-benign" } else { "jbb" }.to_owned()
        }
        "xstest" => {
            load_xstest(path, benign, &mut out)?;
            "xstest".to_owned()
        }
        "strongreject" => {
            load_strongreject(path, benign, &mut out)?;
            "strongreject".to_owned()
        }
        "jsonl" => {
            let file = show(path);
            let text = read_text(path)?;
            parse_jsonl(&file, &text, benign, &mut out)?;
            if out.prompts.is_empty() {
                return Err(BenchmarkError::NoPrompts { file });
            }
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "jsonl".to_owned())
        }
        "builtin" => {
            let which = path.to_string_lossy();
            if !BUILTINS.contains(&which.as_ref()) {
                return Err(BenchmarkError::BadSpec {
                    spec: spec.to_owned(),
                    reason: format!(
                        "unknown builtin {which:?} (available: {})",
                        BUILTINS.join(", ")
                    ),
                });
            }
            let mut b = match which.as_ref() {
                "utility" => builtin_utility(),
                "offdomain" => builtin_offdomain(),
                _ => builtin_probes(),
            };
            if benign {
                b.mark_benign();
            }
            b.spec = spec.to_owned();
            return Ok(b);
        }
        other => {
            return Err(BenchmarkError::BadSpec {
                spec: spec.to_owned(),
                reason: format!(
                    "unknown benchmark kind {other:?} (expected one of {})",
                    KINDS.join(", ")
                ),
            })
        }
    };
    Ok(out.finish(name, spec.to_owned(), all_benign))
}

/// The embedded probe set (`src/builtin/probes.jsonl`, JSON lines with
/// `id`, `category`, `prompt`, `benign`). Named `probes`, spec
/// `builtin:probes`.
pub fn builtin_probes() -> Benchmark {
    let mut out = Collector::default();
    if let Err(e) = parse_jsonl(BUILTIN_PROBES_FILE, BUILTIN_PROBES, false, &mut out) {
        // Covered by a unit test; the file is compiled in.
        panic!("embedded probe set is invalid: {e}");
    }
    out.finish("probes".to_owned(), "builtin:probes".to_owned(), false)
}

pub mod attacks;
mod collect;
mod csv_table;
mod formats;
mod offdomain;
mod utility;

pub use attacks::{Attack, Modifier};
use collect::{read_text, show, Collector, Entry};
use csv_table::{csv_rows, Table};
use formats::{
    load_advbench, load_harmbench, load_hex_phi, load_jbb, load_strongreject, load_xstest,
    parse_jsonl,
};
pub use offdomain::builtin_offdomain;
pub use utility::{builtin_utility, is_correct};

#[cfg(test)]
mod tests;
