//! `safedrift-testkit`: serve a [`Script`] over HTTP until SIGINT/SIGTERM.
//!
//! ```text
//! safedrift-testkit --script FILE.json [--listen 127.0.0.1:0] [--port-file PATH]
//! safedrift-testkit --demo             # built-in aligned / drifted / judge models
//! safedrift-testkit --demo --print-script   # show the demo script as JSON
//! ```
//!
//! Prints `listening on http://127.0.0.1:PORT/v1` on stdout once the port is
//! bound, and writes the bare port number to `--port-file` (atomically, via
//! a rename) so scripts can wait for it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use safedrift_testkit::{demo_script, spawn_at, Script};

/// A scriptable OpenAI-compatible server for safedrift's tests, benchmarks
/// and demo.
#[derive(Parser, Debug)]
#[command(name = "safedrift-testkit", version)]
struct Args {
    /// JSON script describing models, replies and faults.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "demo",
        conflicts_with = "demo"
    )]
    script: Option<PathBuf>,
    /// Use the built-in demo script (models `aligned`, `drifted`, `judge`).
    #[arg(long)]
    demo: bool,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write the bound port number to this file.
    #[arg(long, value_name = "PATH")]
    port_file: Option<PathBuf>,
    /// Print the effective script as JSON and exit.
    #[arg(long)]
    print_script: bool,
}

fn load(args: &Args) -> Result<Script, String> {
    match &args.script {
        None => Ok(demo_script()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let script = Script::from_json(&text)
                .map_err(|e| format!("invalid script {}: {e}", path.display()))?;
            script
                .validate()
                .map_err(|e| format!("invalid script {}: {e}", path.display()))?;
            Ok(script)
        }
    }
}

fn write_port_file(path: &PathBuf, port: u16) -> std::io::Result<()> {
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, port.to_string())?;
    std::fs::rename(&tmp, path)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let script = match load(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("safedrift-testkit: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_script {
        println!(
            "{}",
            serde_json::to_string_pretty(&script).expect("script serializes")
        );
        return ExitCode::SUCCESS;
    }
    let server = match spawn_at(script, args.listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("safedrift-testkit: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.port_file {
        if let Err(e) = write_port_file(path, server.addr.port()) {
            eprintln!("safedrift-testkit: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on {}", server.base_url());
    let _ = stdout.flush();

    wait_for_signal().await;
    // Give in-flight answers a moment, but never hang on slow faults.
    let _ = tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await;
    ExitCode::SUCCESS
}
