//! `alvryn`: argument parsing and exit codes only; everything else is in
//! the library.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;

// A request allocates a few dozen small blocks (headers, JSON, rows);
// mimalloc's per-thread free lists serve them without glibc's arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = alvryn_server::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALVRYN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    alvryn_server::cli::run(cli).await
}
