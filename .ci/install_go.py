#!/usr/bin/env python3
"""Makes Go 1.26 available for the tests' kube-apiserver and etcd build, on a machine without it.

    python3 .ci/install_go.py   # prints the directory to put first on PATH

If `go` on PATH is Go 1.26 or newer, prints its directory and does nothing else. Otherwise it
takes Go's own distribution from the Go module proxy (the module golang.org/toolchain, the one
the go command itself downloads for GOTOOLCHAIN), checks its SHA-256 against the pin below, and
unpacks it under ~/.cache/extctl/ (reused on later runs). Python's standard library only.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

VERSION = "1.26.8"
MODULE = f"golang.org/toolchain@v0.0.1-go{VERSION}.linux-amd64"
URL = f"https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go{VERSION}.linux-amd64.zip"
SHA256 = "30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7"
ROOT = Path.home() / ".cache" / "extctl" / f"go{VERSION}"


def usable_go():
    """The bin directory of a `go` on PATH that is 1.26 or newer, else None."""
    go = shutil.which("go")
    if not go:
        return None
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout
    except OSError:
        return None
    found = re.match(r"go(\d+)\.(\d+)", out.strip())
    if found and (int(found.group(1)), int(found.group(2))) >= (1, 26):
        return str(Path(go).resolve().parent)
    return None


def install():
    bin_dir = ROOT / "bin"
    if (bin_dir / "go").is_file():
        return str(bin_dir)
    ROOT.parent.mkdir(parents=True, exist_ok=True)
    archive = ROOT.parent / f"go{VERSION}.zip.partial"
    print(f"install_go: downloading Go {VERSION} from the Go module proxy", file=sys.stderr)
    with urllib.request.urlopen(URL, timeout=600) as answer, open(archive, "wb") as out:
        shutil.copyfileobj(answer, out)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SHA256:
        archive.unlink()
        sys.exit(f"install_go: {URL} has SHA-256 {digest}, expected {SHA256}")
    staging = ROOT.parent / f"go{VERSION}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(staging)
    archive.unlink()
    # Module zips keep no file modes: make the commands executable, as the go command does.
    unpacked = staging / MODULE
    for pattern in ("bin/*", "pkg/tool/*/*"):
        for path in unpacked.glob(pattern):
            path.chmod(0o755)
    shutil.rmtree(ROOT, ignore_errors=True)
    unpacked.rename(ROOT)
    shutil.rmtree(staging, ignore_errors=True)
    return str(bin_dir)


if __name__ == "__main__":
    print(usable_go() or install())
