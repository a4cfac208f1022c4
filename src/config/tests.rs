use super::*;

fn problems(text: &str) -> Vec<String> {
    match parse(text, &Source::File("t.toml".into())) {
        Ok(_) => vec![],
        Err(e) => e.problems,
    }
}

#[test]
fn the_embedded_default_is_valid() {
    let c = parse(DEFAULT_CONFIG, &Source::Embedded).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("./safedrift-data"));
    assert_eq!(c.api.listen, "127.0.0.1:7300");
}

#[test]
fn inline_secrets_are_refused_by_key() {
    let p = problems(
        "[backends.v]\nkind = \"openai\"\nbase_url = \"http://x/v1\"\napi_key = \"sk-secret\"\n",
    );
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("`backends.v.api_key`") && p[0].contains("api_key_env"));
    assert!(!p[0].contains("sk-secret"));
}

#[test]
fn type_errors_name_the_key_and_line() {
    let p = problems("[drift]\nsignificance = \"high\"\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("`drift.significance`"), "{p:?}");
    assert!(p[0].contains("line 2"), "{p:?}");
    let p = problems(
        "[backends.v]\nkind = \"openai\"\nbase_url = \"http://x/v1\"\nmax_concurency = 3\n",
    );
    assert!(p[0].contains("max_concurency"), "{p:?}");
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let text = r#"
[api]
listen = "nowhere"
[backends.v]
kind = "openai"
base_url = "ftp://x"
[models.m]
backend = "missing"
[watchers.w]
kind = "directory"
schedule = "*/5 * *"
[drift]
significance = 2.0
"#;
    let p = problems(text);
    let joined = p.join("\n");
    for needle in [
        "`api.listen`",
        "`backends.v.base_url`",
        "`models.m.backend`",
        "`watchers.w.schedule`: invalid cron expression \"*/5 * *\": expected 6 fields",
        "`drift.significance`",
    ] {
        assert!(joined.contains(needle), "missing {needle} in\n{joined}");
    }
}

#[test]
fn secrets_come_from_env_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("key");
    std::fs::write(&f, "sk-123\n").unwrap();
    assert_eq!(
        read_secret(None, Some(&f)).unwrap().as_deref(),
        Some("sk-123")
    );
    let e = read_secret(Some("SAFEDRIFT_TEST_SURELY_UNSET"), None).unwrap_err();
    assert!(e.contains("SAFEDRIFT_TEST_SURELY_UNSET"));
    assert_eq!(read_secret(None, None).unwrap(), None);
}
