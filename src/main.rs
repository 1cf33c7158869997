//! `alvryn`: the reference server and its command line. Everything but
//! the allocator is in `alvryn_server::cli`.

use std::process::ExitCode;

// A request allocates a few dozen small blocks (headers, JSON, rows);
// mimalloc's per-thread free lists serve them without glibc's arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    alvryn::server::cli::main()
}
