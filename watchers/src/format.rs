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

fn has_file(dir: &Path, wanted: impl Fn(&str) -> bool) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy().to_ascii_lowercase();
            !name.starts_with('.') && wanted(&name) && e.path().is_file()
        })
}

/// The format of the checkpoint in `dir`, or `None` when it holds none of
/// them.
pub fn format_of(dir: &Path) -> Option<Format> {
    if dir.join("adapter_config.json").is_file() {
        return Some(Format::Lora);
    }
    let onnx = |name: &str| name.ends_with(".onnx");
    if has_file(dir, onnx) || has_file(&dir.join("onnx"), onnx) {
        return Some(Format::Onnx);
    }
    if has_file(dir, |n| n.ends_with(".gguf")) {
        return Some(Format::Gguf);
    }
    let weights = |n: &str| {
        n.ends_with(".safetensors") || (n.starts_with("pytorch_model") && n.ends_with(".bin"))
    };
    has_file(dir, weights).then_some(Format::Safetensors)
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
