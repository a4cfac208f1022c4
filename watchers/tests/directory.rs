//! The directory watcher on real folders: settling, markers, wakes,
//! revisions, hidden folders, vanished folders and config problems.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use safedrift_watchers::directory::DirectoryWatcher;
use safedrift_watchers::{Cache, Checkpoint, Target, Watcher};

fn config(path: &Path, extra: &str) -> toml::Table {
    toml::from_str(&format!("path = {:?}\n{extra}", path.to_str().unwrap())).unwrap()
}

fn watcher(path: &Path, extra: &str) -> DirectoryWatcher {
    DirectoryWatcher::from_config("drop", &config(path, extra)).unwrap()
}

fn models(found: &[Checkpoint]) -> Vec<&str> {
    found.iter().map(|c| c.model.as_str()).collect()
}

fn append(path: &Path, bytes: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(&vec![b'x'; bytes]).unwrap();
}

fn cache(tmp: &Path) -> Cache {
    Cache::new(tmp.join("cache"), u64::MAX).unwrap()
}

#[tokio::test]
async fn a_slow_copy_is_not_returned_until_it_settles() {
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let w = watcher(&drop, "settle = \"300ms\"");
    let ckpt = drop.join("ckpt-1");
    // Written over about a second, in steps well under the settle time.
    let started = Instant::now();
    for step in 0..10 {
        if step % 3 == 0 {
            append(&ckpt.join(format!("shard-{step}.bin")), 100);
        }
        append(&ckpt.join("onnx").join("model.onnx"), 1000);
        let found = w.poll().await.unwrap();
        assert!(found.is_empty(), "returned while being written: {found:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() > Duration::from_millis(900));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let found = w.poll().await.unwrap();
    assert_eq!(models(&found), ["ckpt-1"]);
    let c = &found[0];
    assert_eq!(c.watcher, "drop");
    assert_eq!(c.detail["files"], 5);
    // Stable while nothing changes; the same from a fresh watcher (a
    // restarted daemon), which also sees at once that the folder is quiet.
    assert_eq!(w.poll().await.unwrap(), found);
    let fresh = watcher(&drop, "settle = \"300ms\"");
    assert_eq!(fresh.poll().await.unwrap(), found);
}

#[tokio::test]
async fn a_copy_that_preserves_mtimes_still_settles_by_change_time() {
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    let ckpt = drop.join("old-ckpt");
    append(&ckpt.join("model.onnx"), 1000);
    // Like `cp -rp`: every mtime is a day old, but the copy just happened.
    let day_ago = SystemTime::now() - Duration::from_secs(86_400);
    for path in [ckpt.join("model.onnx"), ckpt.clone(), drop.clone()] {
        filetime::set_file_mtime(path, filetime::FileTime::from_system_time(day_ago)).unwrap();
    }
    let w = watcher(&drop, "settle = \"300ms\"");
    assert!(w.poll().await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(models(&w.poll().await.unwrap()), ["old-ckpt"]);
}

#[tokio::test]
async fn with_a_marker_only_marked_folders_are_returned() {
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    let ckpt = drop.join("run-7");
    append(&ckpt.join("model.onnx"), 1000);
    let w = watcher(&drop, "marker = \"COMPLETE\"\nsettle = \"10ms\"");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        w.poll().await.unwrap().is_empty(),
        "returned without its marker"
    );
    std::fs::write(ckpt.join("COMPLETE"), "").unwrap();
    let found = w.poll().await.unwrap();
    assert_eq!(models(&found), ["run-7"]);
    // The marker itself is not part of the revision.
    std::fs::write(ckpt.join("COMPLETE"), "done at noon").unwrap();
    assert_eq!(w.poll().await.unwrap(), found);
    let target = w.fetch(&found[0], &cache(tmp.path())).await.unwrap();
    assert_eq!(target, Target::Onnx { dir: ckpt.clone() });
    // Removing the marker withdraws it.
    std::fs::remove_file(ckpt.join("COMPLETE")).unwrap();
    assert!(w.poll().await.unwrap().is_empty());
    let err = w.fetch(&found[0], &cache(tmp.path())).await.unwrap_err();
    assert_eq!(err.kind, "gone", "{}", err.message);
}

#[tokio::test]
async fn wake_fires_on_a_new_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let w = watcher(&drop, "");
    let wake = w.wake().expect("the directory watcher wakes the daemon");
    // Nothing has happened yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), wake.notified())
            .await
            .is_err()
    );
    std::fs::create_dir(drop.join("fresh")).unwrap();
    tokio::time::timeout(Duration::from_secs(5), wake.notified())
        .await
        .expect("no wake after a folder appeared");
}

#[tokio::test]
async fn a_settling_folder_schedules_a_wake_when_it_is_due() {
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    append(&drop.join("ckpt").join("model.onnx"), 10);
    let w = watcher(&drop, "settle = \"300ms\"");
    let wake = w.wake().unwrap();
    // Let file events from the setup pass, and drop their wake.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = tokio::time::timeout(Duration::from_millis(10), wake.notified()).await;
    append(&drop.join("ckpt").join("model.onnx"), 10);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = tokio::time::timeout(Duration::from_millis(10), wake.notified()).await;

    assert!(w.poll().await.unwrap().is_empty());
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), wake.notified())
        .await
        .expect("no wake when the settle time was up");
    assert!(
        asked.elapsed() >= Duration::from_millis(150),
        "{:?}",
        asked.elapsed()
    );
    // The wake lands after the settle time: the re-poll finds it.
    assert_eq!(models(&w.poll().await.unwrap()), ["ckpt"]);
}

#[tokio::test]
async fn the_revision_follows_the_contents() {
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    let ckpt = drop.join("m");
    append(&ckpt.join("model.onnx"), 100);
    append(&ckpt.join("tokenizer.json"), 10);
    let w = watcher(&drop, "settle = \"0s\"");
    let cache = cache(tmp.path());
    let first = w.poll().await.unwrap();
    assert_eq!(models(&first), ["m"]);
    assert_eq!(
        w.fetch(&first[0], &cache).await.unwrap(),
        Target::Onnx { dir: ckpt.clone() }
    );

    // A size change.
    append(&ckpt.join("model.onnx"), 1);
    let second = w.poll().await.unwrap();
    assert_ne!(second[0].revision, first[0].revision);
    // An mtime change alone.
    filetime::set_file_mtime(
        ckpt.join("tokenizer.json"),
        filetime::FileTime::from_unix_time(1_000_000, 0),
    )
    .unwrap();
    let third = w.poll().await.unwrap();
    assert_ne!(third[0].revision, second[0].revision);
    // A new file, in a subfolder.
    append(&ckpt.join("extra").join("x.bin"), 1);
    let fourth = w.poll().await.unwrap();
    assert_ne!(fourth[0].revision, third[0].revision);

    // Fetching an outdated revision fails; the current one works.
    let err = w.fetch(&first[0], &cache).await.unwrap_err();
    assert_eq!(err.kind, "gone", "{}", err.message);
    assert!(err.message.contains("changed"), "{}", err.message);
    w.fetch(&fourth[0], &cache).await.unwrap();

    // Deleted between poll and fetch: an error, not a panic.
    std::fs::remove_dir_all(&ckpt).unwrap();
    let err = w.fetch(&fourth[0], &cache).await.unwrap_err();
    assert_eq!(err.kind, "gone", "{}", err.message);
    // Replaced by a file.
    std::fs::write(&ckpt, "not a folder").unwrap();
    let err = w.fetch(&fourth[0], &cache).await.unwrap_err();
    assert_eq!(err.kind, "gone", "{}", err.message);
    assert!(w.poll().await.unwrap().is_empty());

    // A model name that would leave the folder.
    let mut evil = fourth[0].clone();
    evil.model = "../drop".into();
    assert!(w.fetch(&evil, &cache).await.is_err());
}

#[tokio::test]
async fn hidden_and_empty_folders_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let drop = tmp.path().join("drop");
    append(&drop.join(".staging").join("model.onnx"), 10);
    append(&drop.join("visible").join("model.onnx"), 10);
    std::fs::create_dir_all(drop.join("empty")).unwrap();
    append(&drop.join("stray-file.txt"), 10);
    let w = watcher(&drop, "settle = \"0s\"");
    assert_eq!(models(&w.poll().await.unwrap()), ["visible"]);
    let all = watcher(&drop, "settle = \"0s\"\nignore_hidden = false");
    assert_eq!(models(&all.poll().await.unwrap()), [".staging", "visible"]);
}

#[tokio::test]
async fn a_missing_folder_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let w = watcher(&tmp.path().join("nope"), "");
    let err = w.poll().await.unwrap_err();
    assert_eq!(err.kind, "unreachable");
    assert!(err.message.contains("nope"), "{}", err.message);
}

fn problems(text: &str) -> Vec<String> {
    let table: toml::Table = toml::from_str(text).unwrap();
    match DirectoryWatcher::from_config("drop", &table) {
        Ok(_) => Vec::new(),
        Err(p) => p,
    }
}

fn has(problems: &[String], key: &str) -> bool {
    problems
        .iter()
        .any(|p| p.starts_with(&format!("`watchers.drop.{key}`")))
}

#[test]
fn config_problems_name_their_keys() {
    let p = problems("settle = \"1s\"");
    assert!(has(&p, "path"), "{p:?}");
    assert_eq!(p.len(), 1, "{p:?}");

    let p = problems("path = \"/srv/ck\"\npaht = \"/srv/ck\"");
    assert!(has(&p, "paht"), "{p:?}");

    let p = problems("path = \"/srv/ck\"\nsettle = \"soon\"");
    assert!(has(&p, "settle"), "{p:?}");
    assert!(p[0].contains("soon"), "{p:?}");

    // Every problem at once.
    let p = problems("settle = 30\nignore_hidden = \"yes\"\nmarker = \"a/b\"\ncolour = 1");
    for key in ["path", "settle", "ignore_hidden", "marker", "colour"] {
        assert!(has(&p, key), "{key}: {p:?}");
    }
    assert_eq!(p.len(), 5, "{p:?}");

    // The common keys of a [watchers.NAME] table are not the kind's business.
    let table: toml::Table = toml::from_str(
        "kind = \"directory\"\npath = \"./ck\"\nschedule = \"0 */5 * * * *\"\njudge = \"keyword\"",
    )
    .unwrap();
    let w = DirectoryWatcher::from_config("drop", &table).unwrap();
    assert_eq!(w.settle(), Duration::from_secs(30));
    assert!(w.ignore_hidden());
    assert_eq!(w.marker(), None);
    assert!(w.path().is_absolute() && w.path().ends_with("ck"));
}
