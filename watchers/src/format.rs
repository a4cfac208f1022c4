//! What a checkpoint folder holds, so a watcher's `backends` can send each
//! format to the backend that runs it (`[watchers.X] backends = { lora =
//! "fleet", safetensors = "launcher", onnx = "local" }`).

use std::path::Path;

/// A checkpoint's format, told from its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A PEFT LoRA adapter: `adapter_config.json` (+ its weights).
    Lora,
    /// An ONNX export: a `.onnx` graph in the folder or its `onnx/`.
    Onnx,
    /// A GGUF file (llama.cpp).
    Gguf,
    /// Full weights: `.safetensors` (or PyTorch `.bin`) files.
    Safetensors,
}

/// The names `backends` takes, in the order a folder is told: an adapter
/// first (it holds safetensors too), then an ONNX export (often shipped
/// next to the safetensors it came from), then GGUF.
pub const FORMATS: [(&str, Format); 4] = [
    ("lora", Format::Lora),
    ("onnx", Format::Onnx),
    ("gguf", Format::Gguf),
    ("safetensors", Format::Safetensors),
];

impl Format {
    /// The name `backends` uses.
    pub fn as_str(self) -> &'static str {
        FORMATS
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("", |(name, _)| name)
    }
}

/// The format a file (a name or a path; its last segment counts) is the
/// defining file of: `adapter_config.json`, a `.onnx` graph, a `.gguf`
/// file, full weights (`.safetensors` other than an adapter's, PyTorch
/// `pytorch_model*.bin`). The Hugging Face watcher tells listed repos by it.
pub fn format_of_file(path: &str) -> Option<Format> {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    if name.starts_with('.') {
        None
    } else if name == "adapter_config.json" {
        Some(Format::Lora)
    } else if name.ends_with(".onnx") {
        Some(Format::Onnx)
    } else if name.ends_with(".gguf") {
        Some(Format::Gguf)
    } else if (name.ends_with(".safetensors") && !name.starts_with("adapter_model"))
        || (name.starts_with("pytorch_model") && name.ends_with(".bin"))
    {
        Some(Format::Safetensors)
    } else {
        None
    }
}

/// The formats of the files directly in `dir`.
fn formats_in(dir: &Path) -> Vec<Format> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .filter_map(|e| format_of_file(&e.file_name().to_string_lossy()))
        .collect()
}

/// The format of the checkpoint in `dir` (an ONNX export may sit in its
/// `onnx/` folder): the first of [`FORMATS`] it holds, `None` when it holds
/// none of them.
pub fn format_of(dir: &Path) -> Option<Format> {
    let mut found = formats_in(dir);
    found.extend(
        formats_in(&dir.join("onnx"))
            .into_iter()
            .filter(|f| *f == Format::Onnx),
    );
    FORMATS.iter().map(|(_, f)| *f).find(|f| found.contains(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_told_by_its_files() {
        let d = tempfile::tempdir().unwrap();
        let dir = |name: &str, files: &[&str]| {
            let p = d.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            for f in files {
                let f = p.join(f);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(f, b"x").unwrap();
            }
            p
        };
        let cases = [
            (
                dir("a", &["adapter_config.json", "adapter_model.safetensors"]),
                Some(Format::Lora),
            ),
            (
                dir("b", &["model.onnx", "model.safetensors"]),
                Some(Format::Onnx),
            ),
            (
                dir("c", &["onnx/model.onnx", "config.json"]),
                Some(Format::Onnx),
            ),
            (dir("d", &["model.Q4_K_M.GGUF"]), Some(Format::Gguf)),
            (
                dir("e", &["model-00001-of-00002.safetensors", "config.json"]),
                Some(Format::Safetensors),
            ),
            (dir("f", &["pytorch_model.bin"]), Some(Format::Safetensors)),
            (dir("g", &["README.md", ".model.onnx"]), None),
        ];
        for (path, want) in cases {
            assert_eq!(format_of(&path), want, "{}", path.display());
        }
        assert_eq!(format_of(&d.path().join("missing")), None);
        assert_eq!(Format::Safetensors.as_str(), "safetensors");
    }
}
