//! `*_file` secrets under systemd: a bare name is a credential id, read
//! from `$CREDENTIALS_DIRECTORY`; paths stay paths. One test per binary,
//! since it sets a process-wide environment variable.

use safedrift_watchers::{read_secret, secret_path};
use std::path::Path;

#[test]
fn bare_names_are_credentials_and_paths_stay_paths() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("api-token"), "s3cret-from-systemd\n").unwrap();
    std::fs::write(dir.path().join("plain"), "s3cret-from-a-path").unwrap();

    // Without $CREDENTIALS_DIRECTORY a bare name is a path relative to the
    // working directory, as before.
    std::env::remove_var("CREDENTIALS_DIRECTORY");
    assert_eq!(secret_path(Path::new("api-token")), Path::new("api-token"));

    std::env::set_var("CREDENTIALS_DIRECTORY", &creds);
    assert_eq!(
        read_secret(None, Some(Path::new("api-token")))
            .unwrap()
            .as_deref(),
        Some("s3cret-from-systemd")
    );
    // An absolute path, or one with a directory part, is not a credential id.
    let plain = dir.path().join("plain");
    assert_eq!(
        read_secret(None, Some(&plain)).unwrap().as_deref(),
        Some("s3cret-from-a-path")
    );
    assert_eq!(
        secret_path(Path::new("sub/api-token")),
        Path::new("sub/api-token")
    );
    // A credential that was not loaded: the error names the file it looked
    // for, never a secret.
    let e = read_secret(None, Some(Path::new("smtp-password"))).unwrap_err();
    assert!(
        e.message
            .contains(&creds.join("smtp-password").display().to_string()),
        "{}",
        e.message
    );
    assert!(!e.message.contains("s3cret"), "{}", e.message);
    std::env::remove_var("CREDENTIALS_DIRECTORY");
}
