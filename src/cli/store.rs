//! `check-config`, `export`, `import` and `alert test`: the config, the
//! store's backups, and the alert targets.

use std::path::PathBuf;

use safedrift::config;

use crate::{load_config, usage, EXIT_BACKEND, EXIT_USAGE};

pub(crate) fn check_config(flag: Option<PathBuf>) -> u8 {
    let source = config::locate(flag.as_deref());
    match config::load(&source) {
        Ok(_) => {
            println!("{source}: ok");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{} problem(s) found", e.problems.len());
            EXIT_USAGE
        }
    }
}

fn store_dir(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> Result<PathBuf, u8> {
    match data_dir {
        Some(d) => Ok(d),
        None => Ok(load_config(config)?.data_dir.clone()),
    }
}

pub(crate) fn export(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    out: Option<PathBuf>,
) -> u8 {
    let dir = match store_dir(config, data_dir) {
        Ok(d) => d,
        Err(code) => return code,
    };
    if !dir.exists() {
        return usage(format!(
            "{}: no store here (nothing to export)",
            dir.display()
        ));
    }
    let store = match safedrift::store::Store::open(&dir) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let written = match &out {
        None => {
            let stdout = std::io::stdout();
            let mut lock = std::io::BufWriter::new(stdout.lock());
            safedrift::backup::export(&store, &mut lock)
        }
        Some(path) => {
            let mut partial = path.as_os_str().to_owned();
            partial.push(".partial");
            let partial = PathBuf::from(partial);
            let result = std::fs::File::create(&partial)
                .map_err(safedrift::backup::BackupError::Write)
                .and_then(|f| {
                    let mut w = std::io::BufWriter::new(f);
                    let n = safedrift::backup::export(&store, &mut w)?;
                    let f = w
                        .into_inner()
                        .map_err(|e| safedrift::backup::BackupError::Write(e.into_error()))?;
                    f.sync_all()
                        .map_err(safedrift::backup::BackupError::Write)?;
                    std::fs::rename(&partial, path)
                        .map_err(safedrift::backup::BackupError::Write)?;
                    Ok(n)
                });
            if result.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            result
        }
    };
    match written {
        Ok(n) => {
            eprintln!("exported {n} records from {}", dir.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_BACKEND
        }
    }
}

pub(crate) fn import(file: PathBuf, config: Option<PathBuf>, data_dir: Option<PathBuf>) -> u8 {
    let dir = match store_dir(config, data_dir) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let result = if file.as_os_str() == "-" {
        let stdin = std::io::stdin();
        safedrift::backup::import(&mut stdin.lock(), "<stdin>", &dir)
    } else {
        match std::fs::File::open(&file) {
            Ok(f) => safedrift::backup::import(
                &mut std::io::BufReader::new(f),
                &file.display().to_string(),
                &dir,
            ),
            Err(e) => return usage(format!("{}: cannot read: {e}", file.display())),
        }
    };
    match result {
        Ok(n) => {
            eprintln!("imported {n} records into {}", dir.display());
            0
        }
        Err(e) => usage(e),
    }
}

pub(crate) fn alert_test(name: &str, flag: Option<PathBuf>) -> u8 {
    let config = match load_config(flag) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(kind) = config.alerts.get(name).map(|a| a.common.kind) else {
        let known: Vec<&str> = config.alerts.keys().map(String::as_str).collect();
        return usage(format!(
            "no alert target named {name:?} (configured: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let started = std::time::Instant::now();
    match runtime.block_on(safedrift::alerts::send_test(&config, name)) {
        Ok(id) => {
            println!(
                "{name} ({kind}): delivered test message {id} in {} ms",
                started.elapsed().as_millis()
            );
            0
        }
        Err(e) => {
            eprintln!("{name} ({kind}): failed: {e}");
            EXIT_BACKEND
        }
    }
}
