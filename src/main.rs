//! The `mnq` command: parses arguments and calls the library; exit 2 on bad input.

mod cli;

use clap::Parser;

/// The allocator of the command (and of `benches/model.rs`, which times what it ships).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Restore the default SIGPIPE action so `mnq units | head` ends quietly instead of panicking.
#[cfg(unix)]
fn reset_sigpipe() {
    extern "C" {
        fn signal(sig: i32, handler: usize) -> usize;
    }
    // SAFETY: SIGPIPE (13) back to SIG_DFL (0) before any thread starts; no handler runs Rust code.
    unsafe {
        signal(13, 0);
    }
}

#[cfg(not(unix))]
fn reset_sigpipe() {}

fn main() {
    reset_sigpipe();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
