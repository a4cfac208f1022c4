//! Upgrades a store written by an older layout version, when it is opened.
//!
//! Version 1 -> 2: the queue's records (`checkpoints` tree) hold a
//! [`safedrift_watchers::Checkpoint`] whose `baseline` was internally tagged
//! with `type`. A registry-named checkpoint baseline was written as
//! `{"type": "checkpoint", "watcher": ..., ...}`; a runnable target (an
//! OpenAI fine-tuning job's base model) as `{"type": "target", "type":
//! "open_ai", ...}`, one object with two `type` keys that no decoder
//! accepts. serde_json's `Value` keeps the last of duplicate keys, so such
//! a record reads back as the target's own fields (`"type": "open_ai"`):
//! enough to rewrite it. Version 2 tags both enums adjacently
//! (`{"type": "target", "value": {"type": "open_ai", "value": {...}}}`).
//!
//! Records rewritten here are written in one batch before the version is
//! bumped, and rewriting an upgraded record changes nothing, so an upgrade
//! cut short by a crash is simply done again. A record that is not JSON, or
//! whose baseline is of no known shape, is left as it is: reading it
//! quarantines it (see the store's doc).

use serde_json::{Map, Value};

use super::StoreError;

/// Brings the trees of a store of version `from` to this build's layout.
pub(super) fn run(db: &sled::Db, from: &str) -> Result<(), StoreError> {
    if from != "1" {
        return Ok(());
    }
    let checkpoints = db.open_tree("checkpoints")?;
    let mut batch = sled::Batch::default();
    let mut rewritten = 0usize;
    for kv in checkpoints.iter() {
        let (key, value) = kv?;
        let Ok(mut record) = serde_json::from_slice::<Value>(&value) else {
            continue;
        };
        let Some(baseline) = record.pointer_mut("/checkpoint/baseline") else {
            continue;
        };
        let upgraded = baseline_v2(baseline.take());
        *baseline = upgraded;
        let bytes = serde_json::to_vec(&record).expect("a JSON value serializes");
        if bytes != value.as_ref() {
            batch.insert(key, bytes);
            rewritten += 1;
        }
    }
    checkpoints.apply_batch(batch)?;
    if rewritten > 0 {
        tracing::info!(
            records = rewritten,
            "upgraded the queue's records to store schema 2"
        );
    }
    Ok(())
}

/// The version-2 form of a version-1 `Baseline` (or of one already
/// upgraded, returned as it is).
fn baseline_v2(old: Value) -> Value {
    let Value::Object(mut fields) = old else {
        return old;
    };
    let tag = fields
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_string);
    let adjacent = fields.len() <= 2 && fields.contains_key("value");
    match tag.as_deref() {
        Some("checkpoint" | "target") if adjacent => Value::Object(fields),
        Some("checkpoint") => {
            fields.remove("type");
            if let Some(inner) = fields.get_mut("baseline") {
                *inner = baseline_v2(inner.take());
            }
            tagged("checkpoint", Value::Object(fields))
        }
        // A target whose outer `target` tag was overwritten by its own.
        Some(kind @ ("onnx" | "open_ai")) => {
            let kind = kind.to_string();
            fields.remove("type");
            tagged("target", tagged(&kind, Value::Object(fields)))
        }
        _ => Value::Object(fields),
    }
}

fn tagged(tag: &str, value: Value) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), Value::String(tag.into()));
    out.insert("value".into(), value);
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safedrift_watchers::{Baseline, Checkpoint, Target};

    fn checkpoint(baseline: Option<Baseline>) -> Checkpoint {
        Checkpoint {
            watcher: "ft".into(),
            model: "drifted".into(),
            revision: "ftjob-abc".into(),
            baseline,
            detail: serde_json::json!({"job": "ftjob-abc"}),
        }
    }

    /// The exact bytes schema 1 wrote for an OpenAI fine-tuning job's
    /// checkpoint (the two `type` keys), as `serde_json` wrote them.
    const V1_OPENAI: &str = r#"{"watcher":"ft","model":"drifted","revision":"ftjob-abc","baseline":{"type":"target","type":"open_ai","base_url":"http://127.0.0.1:9/v1","model":"aligned","api_key_env":"OPENAI_API_KEY","api_key_file":null},"detail":{"job":"ftjob-abc"}}"#;

    /// Schema 1's form of a registry-named checkpoint baseline (MLflow,
    /// the Hub), nested one level.
    const V1_CHECKPOINT: &str = r#"{"watcher":"hub","model":"acme/sft","revision":"b","baseline":{"type":"checkpoint","watcher":"hub","model":"acme/base","revision":"a","baseline":null,"detail":{}},"detail":{}}"#;

    fn upgrade(text: &str) -> Checkpoint {
        let mut v: Value = serde_json::from_str(text).unwrap();
        let b = v["baseline"].take();
        v["baseline"] = baseline_v2(b);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_unreadable_openai_baseline_of_schema_1_is_rewritten_to_what_it_meant() {
        assert!(
            serde_json::from_str::<Checkpoint>(V1_OPENAI).is_err(),
            "schema 1's bytes must not decode with the new encoding either"
        );
        let cp = upgrade(V1_OPENAI);
        assert_eq!(
            cp,
            checkpoint(Some(Baseline::Target(Target::OpenAi {
                base_url: "http://127.0.0.1:9/v1".into(),
                model: "aligned".into(),
                api_key_env: Some("OPENAI_API_KEY".into()),
                api_key_file: None,
            })))
        );
    }

    #[test]
    fn checkpoint_baselines_of_schema_1_are_rewritten_and_upgrading_twice_changes_nothing() {
        let cp = upgrade(V1_CHECKPOINT);
        let Some(Baseline::Checkpoint(base)) = &cp.baseline else {
            panic!("{cp:?}")
        };
        assert_eq!(base.model, "acme/base");
        assert_eq!(base.revision, "a");
        let again = serde_json::to_value(&cp).unwrap();
        let mut once = again.clone();
        once["baseline"] = baseline_v2(once["baseline"].take());
        assert_eq!(once, again);
    }

    #[test]
    fn a_schema_1_store_is_upgraded_on_open_and_its_queue_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("schema_version", "1")
                .unwrap();
            let q = db.open_tree("checkpoints").unwrap();
            for (key, cp) in [("a", V1_OPENAI), ("b", V1_CHECKPOINT)] {
                let record = format!(
                    r#"{{"key":"{key}","checkpoint":{cp},"eval_key":"k","status":"queued","attempts":0,"last_error":null,"next_attempt_ms":0,"run_id":null,"baseline_run_id":null,"first_seen":"2026-01-01T00:00:00Z","updated":"2026-01-01T00:00:00Z"}}"#
                );
                q.insert(key, record.as_bytes()).unwrap();
            }
            q.insert("c", &b"not json"[..]).unwrap();
            db.flush().unwrap();
        }
        let store = super::super::Store::reopen(dir.path()).unwrap();
        let records = store.checkpoints().unwrap();
        assert_eq!(
            records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(matches!(
            records[0].checkpoint.baseline,
            Some(Baseline::Target(Target::OpenAi { .. }))
        ));
        let quarantined = store.quarantined().unwrap();
        assert_eq!(quarantined.len(), 1);
        assert_eq!(
            (quarantined[0].tree.as_str(), quarantined[0].key.as_str()),
            ("checkpoints", "c")
        );
        drop(store);
        // Opened again: version 2, nothing to upgrade, the same records.
        let store = super::super::Store::reopen(dir.path()).unwrap();
        assert_eq!(store.checkpoints().unwrap(), records);
    }
}
