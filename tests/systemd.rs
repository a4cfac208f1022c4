//! The systemd unit: it passes `systemd-analyze verify`, scores 2.0 or
//! lower on `systemd-analyze security`, and its sandbox does not break the
//! daemon. The hardening directives that can break ONNX Runtime
//! (`MemoryDenyWriteExecute`, the `SystemCallFilter` allowlist,
//! `NoNewPrivileges`) are read from `systemd/safedrift.service` itself and
//! applied to a real `safedrift run` the way systemd applies them: the
//! kernel's write-xor-execute rule (`PR_SET_MDWE`, what systemd uses where the
//! kernel has it) and a seccomp filter that lets through exactly the system
//! calls of the unit's groups (expanded by `systemd-analyze syscall-filter`)
//! and fails the others with EPERM (`SystemCallErrorNumber=EPERM`). The
//! daemon then evaluates a real ONNX checkpoint dropped into a watched folder.
//!
//! Needs `systemd-analyze` (Debian's `systemd` package) and python3 with
//! `tools/requirements.txt`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Scratch;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("systemd/safedrift.service")).unwrap()
}

fn analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze runs (install Debian's `systemd` package)")
}

/// The unit with its binary paths pointed at the binary under test
/// (`verify` checks that `ExecStart`'s binary exists).
fn unit_for_test(dir: &Path) -> PathBuf {
    let text = unit_text().replace("/usr/local/bin/safedrift", env!("CARGO_BIN_EXE_safedrift"));
    let path = dir.join("safedrift.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_unit_verifies_and_its_exposure_is_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let unit = unit.to_str().unwrap();

    let out = analyze(&["verify", "--man=no", unit]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("safedrift.service"),
        "systemd-analyze verify warns about the unit:\n{stderr}"
    );

    let out = analyze(&["security", "--offline=true", unit]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    println!("{}", line.trim());
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
    // The threshold flag CI uses agrees.
    let out = analyze(&["security", "--offline=true", "--threshold=20", unit]);
    assert!(out.status.success(), "--threshold=20 rejects the unit");
}

/// The unit's directives, in order (`Key=value`, repeated keys kept).
fn directives(key: &str) -> Vec<String> {
    unit_text()
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// System call numbers of this machine's native ABI, by name.
fn syscall_numbers() -> BTreeMap<String, i64> {
    let header = std::fs::read_to_string("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
        .or_else(|_| std::fs::read_to_string("/usr/include/asm/unistd_64.h"))
        .expect("the kernel's unistd_64.h (Debian's linux-libc-dev)");
    header
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("#define __NR_")?;
            let mut parts = rest.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect()
}

/// The names in a `SystemCallFilter` item: a `@group`, expanded (groups
/// nest) with systemd's own table, or a plain name.
fn expand(item: &str, out: &mut BTreeSet<String>, seen: &mut BTreeSet<String>) {
    if !item.starts_with('@') {
        out.insert(item.to_string());
        return;
    }
    if !seen.insert(item.to_string()) {
        return;
    }
    let listing = analyze(&["syscall-filter", item]);
    assert!(listing.status.success(), "unknown group {item}");
    for line in String::from_utf8_lossy(&listing.stdout).lines().skip(1) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        expand(line, out, seen);
    }
}

/// What the unit's `SystemCallFilter=` lines allow: the first (an
/// allowlist) minus every later `~` list.
fn allowed_syscalls() -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    for (i, line) in directives("SystemCallFilter").iter().enumerate() {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        assert_eq!(deny, i > 0, "the first SystemCallFilter= is the allowlist");
        let mut names = BTreeSet::new();
        for item in items.split_whitespace() {
            expand(item, &mut names, &mut BTreeSet::new());
        }
        if deny {
            allowed.retain(|n| !names.contains(n));
        } else {
            allowed.extend(names);
        }
    }
    // systemd always permits these, whatever the list says.
    for n in ["execve", "exit", "exit_group", "getrlimit", "rt_sigreturn"] {
        allowed.insert(n.to_string());
    }
    allowed
}

/// The compiled seccomp program: allow the named calls, EPERM the rest.
fn seccomp_program(allowed: &BTreeSet<String>) -> seccompiler::BpfProgram {
    let numbers = syscall_numbers();
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = allowed
        .iter()
        .filter_map(|n| numbers.get(n))
        .map(|&nr| (nr, vec![]))
        .collect();
    assert!(
        rules.len() > 200,
        "the allowlist looks wrong: {} calls",
        rules.len()
    );
    assert!(
        !rules.contains_key(&numbers["sched_setaffinity"]),
        "~@resources should deny sched_setaffinity"
    );
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        seccompiler::SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
    .unwrap();
    filter.try_into().unwrap()
}

/// `cmd`, sandboxed as the unit sandboxes the daemon.
fn sandboxed(mut cmd: Command, program: seccompiler::BpfProgram) -> Command {
    assert_eq!(directives("MemoryDenyWriteExecute"), ["yes"]);
    assert_eq!(directives("NoNewPrivileges"), ["yes"]);
    // SAFETY: between fork and exec the closure only makes system calls
    // (prctl and seccomp through apply_filter) on memory allocated before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            const PR_SET_MDWE: libc::c_int = 65;
            const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;
            if libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Sets no_new_privs, then installs the filter.
            seccompiler::apply_filter(&program).map_err(|e| std::io::Error::other(e.to_string()))
        });
    }
    cmd
}

/// The sandbox is real: a call outside the allowlist fails with EPERM, and
/// memory cannot be made writable and executable.
#[test]
fn the_sandbox_denies_what_the_unit_denies() {
    let program = seccomp_program(&allowed_syscalls());
    let mut taskset = Command::new("taskset");
    taskset.args(["-c", "0", "true"]);
    let out = sandboxed(taskset, program.clone()).output().unwrap();
    assert!(!out.status.success(), "sched_setaffinity was allowed");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut py = Command::new("python3");
    py.args([
        "-c",
        "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC); print('mapped')",
    ]);
    let out = sandboxed(py, program).output().unwrap();
    assert!(
        !out.status.success(),
        "a writable+executable mapping was allowed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn tiny_model(dir: &Path) -> PathBuf {
    let out = dir.join("tiny");
    let status = Command::new("python3")
        .args([
            "tools/make_tiny_model.py",
            out.to_str().unwrap(),
            "--seed",
            "0",
        ])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "tools/make_tiny_model.py failed (is tools/requirements.txt installed?)"
    );
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// `safedrift run` under the unit's sandbox finds a checkpoint, evaluates it
/// with ONNX Runtime (its thread pools, its memory allocator, the library
/// loaded from the onnxruntime wheel) and stops cleanly on SIGTERM.
#[test]
fn the_daemon_evaluates_an_onnx_checkpoint_inside_the_units_sandbox() {
    let s = Scratch::new();
    let model = tiny_model(s.dir.path());
    let watched = s.path("watched");
    std::fs::create_dir_all(&watched).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        s.config(),
        format!(
            r#"
data_dir = "{data}"

[api]
listen = "127.0.0.1:{port}"

[benchmarks.probes]
kind = "builtin"
path = "probes"

[backends.local]
kind = "onnx"
max_new_tokens = 8

[watchers.drop]
kind = "directory"
path = "{watched}"
marker = "COMPLETE"
schedule = "*/1 * * * * *"
backend = "local"
benchmarks = ["probes"]
judge = "keyword"
"#,
            data = s.data_dir().display(),
            watched = watched.display(),
        ),
    )
    .unwrap();

    let program = seccomp_program(&allowed_syscalls());
    let log_path = s.path("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_safedrift"));
    cmd.args([
        "run",
        "--config",
        s.config().to_str().unwrap(),
        "--log-format",
        "json",
    ])
    .env("RUST_LOG", "warn,safedrift=info")
    .stdout(Stdio::null())
    .stderr(log);
    let mut child = sandboxed(cmd, program).spawn().unwrap();

    let ckpt = watched.join("ckpt-1");
    copy_dir(&model, &ckpt);
    std::fs::write(ckpt.join("COMPLETE"), "").unwrap();

    let deadline = Instant::now() + Duration::from_secs(240);
    let evaluated = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("\"evaluated\"") {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the daemon exited under the sandbox ({status}):\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "no evaluation within 240 s under the sandbox:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !evaluated.contains("\"ERROR\"") && !evaluated.contains("Operation not permitted"),
        "errors under the sandbox:\n{evaluated}"
    );
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the daemon did not stop cleanly: {status}"
    );

    // Every prompt of the run was answered and judged inside the sandbox.
    let store = safedrift::store::Store::open(&s.data_dir()).unwrap();
    let runs = store.runs().unwrap();
    let run = runs
        .iter()
        .find(|r| {
            r.checkpoint
                .as_deref()
                .is_some_and(|c| c.contains("ckpt-1"))
        })
        .unwrap_or_else(|| panic!("no run of ckpt-1 in {runs:?}"));
    assert_eq!(run.status, safedrift::store::RunStatus::Completed);
    let results = store.results(&run.id).unwrap();
    assert_eq!(results.len(), run.total);
    assert!(results.iter().all(|r| r.verdict.is_some()));
}
