//! The genuine kube-apiserver and etcd binaries: given by `KUBE_APISERVER_BIN` and `ETCD_BIN`
//! (as `KUBEBUILDER_ASSETS` gives envtest its binaries), or else built once with Go from the
//! pinned module in `tests/kube/` into `target/kube/<pins>/`, and reused while the pins are
//! unchanged. Without either, the tests that need a server fail saying how to get one: they
//! never skip.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::pytools::fnv1a;

/// The Kubernetes release the pins build; `-ldflags -X` makes the server report it.
pub const KUBERNETES_VERSION: &str = "v1.36.3";

/// What the build depends on: a change to any of them builds again, into a new directory.
const PINS: [&str; 3] = [
    include_str!("../../kube/go.mod"),
    include_str!("../../kube/go.sum"),
    include_str!("../../kube/etcd/main.go"),
];

pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
}

/// The binaries to run: from the environment, or built (once; test binaries run one after the
/// other but benches may run beside them, so the build is serialised with a file lock).
pub fn binaries() -> Binaries {
    let given = (
        std::env::var_os("KUBE_APISERVER_BIN"),
        std::env::var_os("ETCD_BIN"),
    );
    match given {
        (Some(kube_apiserver), Some(etcd)) => Binaries {
            kube_apiserver: existing(kube_apiserver.into(), "KUBE_APISERVER_BIN"),
            etcd: existing(etcd.into(), "ETCD_BIN"),
        },
        (None, None) => build(),
        _ => panic!("set both KUBE_APISERVER_BIN and ETCD_BIN, or neither (to build them with Go)"),
    }
}

fn existing(path: PathBuf, variable: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{variable}={} is not a file: point it at a {} binary",
        path.display(),
        if variable == "ETCD_BIN" {
            "etcd"
        } else {
            "kube-apiserver"
        }
    );
    path
}

fn build() -> Binaries {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kube");
    let dir = target.join(format!(
        "{KUBERNETES_VERSION}-{:016x}",
        fnv1a(&PINS.concat())
    ));
    let binaries = Binaries {
        kube_apiserver: dir.join("kube-apiserver"),
        etcd: dir.join("etcd"),
    };
    std::fs::create_dir_all(&dir).expect("creating target/kube");
    let lock = File::create(target.join("build.lock")).expect("creating target/kube/build.lock");
    lock.lock().expect("locking target/kube/build.lock");
    if binaries.kube_apiserver.is_file() && binaries.etcd.is_file() {
        return binaries;
    }
    go_version();
    eprintln!(
        "building kube-apiserver {KUBERNETES_VERSION} and etcd from the Go module proxy into {} \
         (once; minutes on a cold machine)",
        dir.display()
    );
    let version =
        |name: &str, value: &str| format!("-X k8s.io/component-base/version.{name}={value}");
    let ldflags = [
        "-s -w".to_owned(),
        version("gitVersion", KUBERNETES_VERSION),
        version("gitMajor", "1"),
        version("gitMinor", "36"),
        version("gitTreeState", "clean"),
    ]
    .join(" ");
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kube");
    go_build(
        &module,
        &ldflags,
        "k8s.io/kubernetes/cmd/kube-apiserver",
        &binaries.kube_apiserver,
    );
    go_build(&module, "-s -w", "./etcd", &binaries.etcd);
    binaries
}

/// Fails with what to do when there is no Go to build with.
pub fn go_version() {
    let found = Command::new("go").arg("version").output();
    let works = found.as_ref().is_ok_and(|output| output.status.success());
    assert!(
        works,
        "the Kubernetes tests need a genuine kube-apiserver and etcd: install Go 1.26 or newer \
         (they are then built from the pinned module in tests/kube/), or set KUBE_APISERVER_BIN \
         and ETCD_BIN to existing binaries ({found:?})"
    );
}

/// `go build` of `package` in the Go module `module`, into `output` (written whole, then
/// renamed, so a build cut short never leaves a binary that looks complete).
pub fn go_build(module: &Path, ldflags: &str, package: &str, output: &Path) {
    let partial = output.with_extension("partial");
    let status = Command::new("go")
        .current_dir(module)
        .args([
            "build",
            "-mod=readonly",
            "-trimpath",
            "-ldflags",
            ldflags,
            "-o",
        ])
        .arg(&partial)
        .arg(package)
        // The go.mod's own Go release, not a newer one fetched behind the tests' back.
        .env("GOTOOLCHAIN", "local")
        .status()
        .unwrap_or_else(|e| panic!("running go build: {e}"));
    assert!(
        status.success(),
        "go build {package} in {} failed",
        module.display()
    );
    std::fs::rename(&partial, output).expect("moving the built binary into place");
}
