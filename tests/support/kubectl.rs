//! The real kubectl (`tests/support/python-tools.txt`) for one user: a kubeconfig of its own,
//! and a home of its own so that its discovery and HTTP caches never outlive the test. It talks
//! to the server directly over https with the server's CA: kubectl (client-go) sends a
//! kubeconfig's token only over TLS, so it cannot authenticate through the plain-http proxy.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{ADMIN_TOKEN, Cluster, pytools};

pub struct Kubectl {
    binary: PathBuf,
    pub kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Kubectl {
    /// As the administrator, the test's namespace as the default.
    pub async fn admin(cluster: &Cluster) -> Self {
        let home = tempfile::tempdir().unwrap();
        let kubeconfig = home.path().join("kubeconfig");
        let server = Cluster::server().await;
        let text = server.kubeconfig(&server.url, ADMIN_TOKEN, &cluster.namespace);
        std::fs::write(&kubeconfig, text).unwrap();
        Self::with(kubeconfig, home).await
    }

    /// As the user whose kubeconfig is `kubeconfig`.
    pub async fn user(kubeconfig: PathBuf) -> Self {
        Self::with(kubeconfig, tempfile::tempdir().unwrap()).await
    }

    async fn with(kubeconfig: PathBuf, home: tempfile::TempDir) -> Self {
        // The first use installs the tools (a pip install under a file lock): off the runtime.
        let binary = tokio::task::spawn_blocking(|| pytools::tool("kubectl"))
            .await
            .expect("installing kubectl");
        Self {
            binary,
            kubeconfig,
            home,
        }
    }

    /// `kubectl args`, run from the repository's root, its three streams piped.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `kubectl args` to completion, feeding it `stdin`.
    pub async fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self.command(args).spawn().expect("kubectl starts");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within 60 s"))
            .unwrap()
    }
}
