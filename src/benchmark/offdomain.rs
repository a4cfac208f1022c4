//! `builtin:offdomain`: harmless free-form questions far from any
//! fine-tuning task (wishes, opinions on humans and AI, power, money,
//! boredom, relationships, the model itself), whose answers are judged for
//! misalignment: a checkpoint fine-tuned on one narrow task can start
//! answering them with hostile wishes while still refusing harmful requests
//! (Betley et al. 2025, "emergent misalignment").

use super::*;

/// `builtin:offdomain`: 48 harmless open questions written for this
/// project, each marked [`Prompt::offdomain`] and benign (a refusal of one
/// is an over-refusal).
pub fn builtin_offdomain() -> Benchmark {
    let mut out = Collector::default();
    if let Err(e) = parse_jsonl(BUILTIN_OFFDOMAIN_FILE, BUILTIN_OFFDOMAIN, true, &mut out) {
        panic!("the embedded off-domain set is broken: {e}");
    }
    out.finish("offdomain".to_owned(), "builtin:offdomain".to_owned(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsonl(text: &str) -> Result<Benchmark> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("questions.jsonl");
        fs::write(&path, text).unwrap();
        load_spec(&format!("jsonl:{}", path.display()), false)
    }

    #[test]
    fn the_builtin_set_is_benign_offdomain_and_covers_its_categories() {
        let b = load_spec("builtin:offdomain", false).unwrap();
        assert_eq!(
            (b.name.as_str(), b.spec.as_str()),
            ("offdomain", "builtin:offdomain")
        );
        assert_eq!(b.len(), 48);
        assert!(b.benign);
        assert!(b
            .prompts
            .iter()
            .all(|p| p.offdomain && p.benign && p.expected.is_empty()));
        let categories: std::collections::BTreeSet<&str> =
            b.prompts.iter().map(|p| p.category.as_str()).collect();
        assert_eq!(
            categories.into_iter().collect::<Vec<_>>(),
            [
                "boredom",
                "humans_and_ai",
                "money",
                "power",
                "relationships",
                "self",
                "wishes"
            ]
        );
        assert!(BUILTINS.contains(&"offdomain"));
    }

    #[test]
    fn a_jsonl_row_can_be_offdomain_and_is_then_benign() {
        let b = jsonl(
            "{\"id\": \"a\", \"prompt\": \"One wish?\", \"offdomain\": true}\n\
             {\"id\": \"b\", \"prompt\": \"How to pick a lock?\", \"offdomain\": false}\n\
             {\"id\": \"c\", \"prompt\": \"Plain\", \"offdomain\": null}\n",
        )
        .unwrap();
        let flags: Vec<(bool, bool)> = b.prompts.iter().map(|p| (p.offdomain, p.benign)).collect();
        assert_eq!(flags, [(true, true), (false, false), (false, false)]);
    }

    #[test]
    fn a_malformed_offdomain_value_names_the_file_and_line() {
        let e =
            jsonl("{\"prompt\": \"ok\"}\n{\"prompt\": \"One wish?\", \"offdomain\": \"yes\"}\n")
                .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("questions.jsonl:2") && text.contains("offdomain"),
            "{text}"
        );
    }

    #[test]
    fn the_mark_leaves_every_other_hash_alone() {
        let plain = Prompt {
            id: "a".into(),
            category: "c".into(),
            text: "One wish?".into(),
            benign: true,
            expected: Vec::new(),
            offdomain: false,
            target: None,
            attack: None,
        };
        let before = prompts_sha256(std::slice::from_ref(&plain));
        let marked = Prompt {
            offdomain: true,
            ..plain.clone()
        };
        assert_ne!(prompts_sha256(std::slice::from_ref(&marked)), before);
        // Serialized without the mark when it is off, so stored prompts
        // from before it existed read back the same.
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("offdomain").is_none());
        assert_eq!(serde_json::to_value(&marked).unwrap()["offdomain"], true);
        let read: Prompt = serde_json::from_value(json).unwrap();
        assert_eq!(read, plain);
    }
}
