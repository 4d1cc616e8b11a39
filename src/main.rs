//! The `extctl` binary: its allocator, and the command line handed to the library.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    runtime.block_on(extctl::run(extctl::Cli::parse()))
}

/// Turns transparent huge pages off for this process, before the runtime allocates. mimalloc
/// asks for them (and a node may give them unasked), and a 2 MiB page stays resident while any
/// small object on it lives (BENCHMARKS.md, "Memory and scale"). The kernel honours this over
/// both `madvise` and `always`.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument and touches no memory of ours.
    unsafe {
        if libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
            eprintln!(
                "extctl: cannot turn transparent huge pages off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
