//! CSV records, and tables whose columns are found by name.

use super::*;

pub(super) struct Row {
    pub(super) line: u64,
    pub(super) fields: Vec<String>,
}

impl Row {
    pub(super) fn is_blank(&self) -> bool {
        self.fields.iter().all(|f| f.trim().is_empty())
    }
}

/// Reads every record of a CSV text (LF line endings). Blank lines are
/// skipped by the csv crate; trailing whitespace-only records are dropped.
pub(super) fn csv_rows(file: &str, text: &str) -> Result<Vec<Row>> {
    check_quotes(file, text)?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut rec = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => rows.push(Row {
                line: rec.position().map_or(0, |p| p.line()),
                fields: rec.iter().map(str::to_owned).collect(),
            }),
            Err(e) => {
                let line = e
                    .position()
                    .map(|p| p.line())
                    .or_else(|| rows.last().map(|r: &Row| r.line + 1))
                    .unwrap_or(1);
                return Err(BenchmarkError::Csv {
                    file: file.to_owned(),
                    line,
                    message: e.to_string(),
                });
            }
        }
    }
    while rows.last().is_some_and(Row::is_blank) {
        rows.pop();
    }
    Ok(rows)
}

/// Finds a quoted field that is never closed (the csv crate would silently
/// swallow the rest of the file into it). Mirrors the csv crate's rules: a
/// quote opens a quoted field only at the start of a field, `""` inside it
/// is an escaped quote.
pub(super) fn check_quotes(file: &str, text: &str) -> Result<()> {
    let mut line = 1u64;
    let mut field_start = true;
    let mut in_quotes = false;
    let mut open_line = 0u64;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                }
                '"' => in_quotes = false,
                '\n' => line += 1,
                _ => {}
            }
            continue;
        }
        match c {
            '"' if field_start => {
                in_quotes = true;
                open_line = line;
                field_start = false;
            }
            ',' => field_start = true,
            '\n' => {
                line += 1;
                field_start = true;
            }
            _ => field_start = false,
        }
    }
    if in_quotes {
        return Err(BenchmarkError::Csv {
            file: file.to_owned(),
            line: open_line,
            message: "unterminated quoted field (the '\"' opened here is never closed)".to_owned(),
        });
    }
    Ok(())
}

/// A CSV file with a header row, columns located by name.
pub(super) struct Table {
    pub(super) file: String,
    pub(super) width: usize,
    pub(super) columns: HashMap<String, usize>,
    pub(super) rows: Vec<Row>,
}

pub(super) fn header_key(s: &str) -> String {
    s.trim_start_matches('\u{feff}').trim().to_lowercase()
}

impl Table {
    /// Reads `path`, checks the header has `required` columns
    /// (case-insensitive) and every data row has as many fields as the header.
    pub(super) fn read(path: &Path, required: &[&str]) -> Result<Table> {
        let file = show(path);
        let text = read_text(path)?;
        let mut rows = csv_rows(&file, &text)?;
        if rows.is_empty() {
            return Err(BenchmarkError::NoPrompts { file });
        }
        let header = rows.remove(0);
        let mut columns = HashMap::new();
        for (i, name) in header.fields.iter().enumerate() {
            columns.entry(header_key(name)).or_insert(i);
        }
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|c| !columns.contains_key(*c))
            .collect();
        if !missing.is_empty() {
            let found = if header.is_blank() {
                "an empty header".to_owned()
            } else {
                header
                    .fields
                    .iter()
                    .map(|f| format!("{:?}", f.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(BenchmarkError::MissingColumns {
                file,
                line: header.line,
                missing: missing.join(", "),
                expected: required.join(", "),
                found,
            });
        }
        let width = header.fields.len();
        for row in &rows {
            if row.fields.len() != width {
                return Err(BenchmarkError::WrongColumns {
                    file,
                    line: row.line,
                    expected: width,
                    found: row.fields.len(),
                });
            }
        }
        if rows.is_empty() {
            return Err(BenchmarkError::NoPrompts { file });
        }
        Ok(Table {
            file,
            width,
            columns,
            rows,
        })
    }

    /// Field `name` of `row`; "" when the (optional) column is absent.
    pub(super) fn get<'r>(&self, row: &'r Row, name: &str) -> &'r str {
        debug_assert_eq!(row.fields.len(), self.width);
        self.columns
            .get(name)
            .and_then(|&i| row.fields.get(i))
            .map_or("", String::as_str)
    }
}
