#!/usr/bin/env python3
"""The upstream report CRDs tests/reports.rs installs, exactly as their projects publish them.

    python3 tests/support/upstream_crds.py CACHE_DIR   # prints {"openreports": PATH, ...}

Each CRD is taken from its project's Go module on the Go module proxy (the zip the go command
itself downloads), checked against the SHA-256 pinned below, and its one YAML file extracted into
CACHE_DIR (reused on later runs; the zip is not kept). Python's standard library only; nothing
of this is committed.
"""

import hashlib
import json
import os
import sys
import urllib.request
import zipfile
from pathlib import Path

CRDS = {
    # The OpenReports API (openreports.io/v1alpha1 Report), as Policy Reporter 3 reads it.
    "openreports": {
        "module": "github.com/openreports/reports-api",
        "version": "v0.2.1",
        "sha256": "53b4e0d27a0aa7d2ac3f6517195ab02622f2a1cb6811955352841d8486082cee",
        "file": "config/crd/openreports.io_reports.yaml",
    },
    # The wgpolicyk8s.io/v1alpha2 PolicyReport as Kyverno ships it.
    "policyreport": {
        "module": "github.com/kyverno/kyverno",
        "version": "v1.19.1",
        "sha256": "e9d374f6904c4b39de932ad7ade582e90159f520dbb27337415639f5ae2c73bf",
        "file": "config/crds/policyreport/wgpolicyk8s.io_policyreports.yaml",
    },
}


def fetch(name, pin, cache):
    target = cache / f"{pin['module'].replace('/', '+')}@{pin['version']}" / Path(pin["file"]).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    url = f"https://proxy.golang.org/{pin['module']}/@v/{pin['version']}.zip"
    archive = target.parent / f"module.zip.{os.getpid()}.partial"
    print(f"upstream_crds: downloading {url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=300) as answer, open(archive, "wb") as out:
            while chunk := answer.read(1 << 20):
                out.write(chunk)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != pin["sha256"]:
            sys.exit(f"upstream_crds: {url} has SHA-256 {digest}, expected {pin['sha256']}")
        inside = f"{pin['module']}@{pin['version']}/{pin['file']}"
        with zipfile.ZipFile(archive) as zipped:
            text = zipped.read(inside)
    finally:
        archive.unlink(missing_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(text)
    partial.rename(target)
    return target


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: upstream_crds.py CACHE_DIR")
    cache = Path(sys.argv[1])
    paths = {name: str(fetch(name, pin, cache)) for name, pin in CRDS.items()}
    print(json.dumps(paths))


if __name__ == "__main__":
    main()
