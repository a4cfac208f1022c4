//! Backup and restore: `safedrift export` writes the whole store as JSON
//! lines and `safedrift import` restores it into a new store, record for
//! record; truncated or hostile exports are refused without creating
//! anything; a damaged store is never silently recreated empty.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_json, stderr, Scratch};
use safedrift::store::{Store, SCHEMA_VERSION};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tiny_model() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiny-model-backup");
    if !dir.join("model.onnx").exists() {
        let status = Command::new("python3")
            .args([
                "tools/make_tiny_model.py",
                dir.to_str().unwrap(),
                "--seed",
                "3",
            ])
            .current_dir(repo())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "tools/make_tiny_model.py failed (is tools/requirements.txt installed?)"
        );
    }
    dir
}

/// A store with two real runs (a candidate against its baseline, with drift
/// decided), made by `safedrift eval` on the tiny ONNX model.
async fn populated() -> Scratch {
    let s = Scratch::new();
    let model = format!("onnx:{}", tiny_model().display());
    let out = s
        .run(&[
            "eval",
            "--model",
            &model,
            "--baseline",
            &model,
            "--benchmark",
            "builtin:probes",
            "--limit",
            "22",
            "--max-new-tokens",
            "4",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(run_json(&out)["status"], "completed");
    s
}

async fn export(s: &Scratch, out: &Path) -> std::process::Output {
    s.run(&["export", "--out", out.to_str().unwrap()]).await
}

async fn import(s: &Scratch, file: &Path, dir: &Path) -> std::process::Output {
    s.run(&[
        "import",
        file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ])
    .await
}

/// Every record of an export, without its header (which holds the time).
fn records(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().skip(1).map(str::to_string).collect()
}

#[tokio::test]
async fn an_export_restores_record_for_record() {
    let s = populated().await;
    let file = s.path("backup.jsonl");
    let out = export(&s, &file).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!s.path("backup.jsonl.partial").exists());
    let lines = records(&file);
    assert!(lines.len() > 50, "too few records: {}", lines.len());
    assert!(lines.iter().any(|l| l.contains("\"tree\":\"runs\"")));
    assert!(lines.iter().any(|l| l.contains("\"tree\":\"results\"")));

    let restored = s.path("restored");
    let out = import(&s, &file, &restored).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("imported {} records", lines.len() - 1)));
    assert!(!s.path("restored.importing").exists());

    // The same records, byte for byte, when the restored store is exported.
    let again = s.path("again.jsonl");
    let out = s
        .run(&[
            "export",
            "--data-dir",
            restored.to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(records(&file), records(&again));

    // And the restored store reads back the same runs and results.
    let original = Store::open(&s.data_dir()).unwrap();
    let copy = Store::open(&restored).unwrap();
    let mut runs = original.runs().unwrap();
    let mut copied = copy.runs().unwrap();
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    copied.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(runs.len(), 2);
    assert_eq!(runs, copied);
    for run in &runs {
        assert_eq!(
            original.results(&run.id).unwrap(),
            copy.results(&run.id).unwrap()
        );
    }
}

#[tokio::test]
async fn bad_exports_are_refused_and_create_nothing() {
    let s = populated().await;
    let file = s.path("backup.jsonl");
    assert_eq!(export(&s, &file).await.status.code(), Some(0));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();

    let cases: Vec<(&str, String, String)> = vec![
        ("empty", String::new(), "empty file".into()),
        (
            "no header",
            lines[1..].join("\n"),
            "backup-no header.jsonl:1".into(),
        ),
        (
            "cut before the end marker",
            lines[..n - 1].join("\n") + "\n",
            "truncated".into(),
        ),
        (
            "cut mid-line",
            text[..text.len() / 2].to_string(),
            "backup-cut mid-line.jsonl:".to_string(),
        ),
        (
            "a record dropped",
            [&lines[..3], &lines[4..]].concat().join("\n"),
            "the end marker counts".into(),
        ),
        (
            "garbage line",
            [&lines[..3], &["{not json"], &lines[3..]]
                .concat()
                .join("\n"),
            "backup-garbage line.jsonl:4: not a JSON record".into(),
        ),
        (
            "bad key",
            [
                &lines[..3],
                &[r#"{"tree":"runs","key":"zz","value":1}"#],
                &lines[3..],
            ]
            .concat()
            .join("\n"),
            "backup-bad key.jsonl:4: missing or invalid `key`".into(),
        ),
        (
            "another schema",
            lines[0].replace(
                &format!("\"schema_version\":{SCHEMA_VERSION}"),
                "\"schema_version\":99",
            ) + "\n"
                + &lines[1..].join("\n"),
            "schema version 99".into(),
        ),
        (
            "binary",
            "\u{0}\u{1}\u{2}garbage".into(),
            "backup-binary.jsonl:1".into(),
        ),
    ];
    for (name, contents, expected) in cases {
        let bad = s.write(&format!("backup-{name}.jsonl"), contents);
        let target = s.path(&format!("restore-{}", name.replace(' ', "-")));
        let out = import(&s, &bad, &target).await;
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&expected),
            "{name}: expected {expected:?} in {}",
            stderr(&out)
        );
        assert!(!target.exists(), "{name}: the target was created");
        let staging = s.path(&format!("restore-{}.importing", name.replace(' ', "-")));
        assert!(
            !staging.exists(),
            "{name}: the staging directory was left behind"
        );
    }

    // A store is never overwritten or merged into: the live one is untouched.
    let before = Store::open(&s.data_dir()).unwrap().runs().unwrap();
    let out = import(&s, &file, &s.data_dir()).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(Store::open(&s.data_dir()).unwrap().runs().unwrap(), before);
}

#[tokio::test]
async fn a_damaged_store_stops_with_the_restore_steps_and_is_not_recreated() {
    let s = populated().await;
    std::fs::remove_file(s.data_dir().join("db")).unwrap();
    for args in [&["run"][..], &["export"][..]] {
        let out = s.run(args).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&s.data_dir().display().to_string()), "{err}");
        assert!(err.contains("safedrift import"), "{err}");
        assert!(
            !s.data_dir().join("db").exists(),
            "{args:?} recreated the store"
        );
    }
    // `conf` damaged: sled refuses, the message says how to restore.
    let s = populated().await;
    std::fs::write(s.data_dir().join("conf"), b"\xff\xfe garbage").unwrap();
    let out = s.run(&["export"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("safedrift import"),
        "{}",
        stderr(&out)
    );
}
