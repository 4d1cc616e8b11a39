//! The Python tools the tests run (real Helm, kubernetes-validate, checkov, kubectl, an
//! OpenMetrics parser), installed once into a virtual environment under `target/`, so a fresh
//! machine needs nothing beyond Python 3 and `cargo test`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

const REQUIREMENTS: &str = include_str!("python-tools.txt");

/// The directory of the virtual environment holding the pinned tools, created (or completed) on
/// first use. Test binaries run in parallel, so creation is serialised with a file lock.
pub fn venv() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = base.join(format!("pytools-{:016x}", fnv1a(REQUIREMENTS)));
    let marker = dir.join(".installed");
    std::fs::create_dir_all(base).expect("creating the target tmp directory");
    let lock = File::create(base.join("pytools.lock")).expect("creating the pytools lock file");
    lock.lock().expect("locking the pytools lock file");
    if !marker.exists() {
        install(&dir);
        std::fs::write(&marker, REQUIREMENTS).expect("marking the tools installed");
    }
    dir
}

/// The virtual environment's Python interpreter.
pub fn python() -> PathBuf {
    venv().join("bin/python")
}

/// An executable the tools installed (`kubectl`, `checkov`, ...).
pub fn tool(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

fn install(dir: &Path) {
    let requirements = dir.with_extension("txt");
    std::fs::write(&requirements, REQUIREMENTS).expect("writing the requirements file");
    run(Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg("--clear")
        .arg(dir));
    run(Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements));
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A stable hash of the requirements, so a changed pin gets a fresh environment.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
