//! The `extctl` binary: its allocator, and the command line handed to the library.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    extctl::run(extctl::Cli::parse()).await
}
