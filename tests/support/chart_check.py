#!/usr/bin/env python3
"""Runs the real tools over a Helm chart and prints what they found, as one JSON document.

    chart_check.py CHART PLAN.json --checkov PATH

PLAN names the release and namespace, the scenarios to render (values per scenario), the values
expected to be rejected, and the scenarios checkov scans. For each scenario: the rendered objects
(Helm 4's own engine, through helm-python-sdk), `helm lint --strict`'s findings, and what
kubernetes-validate (strict) says about each object for the oldest Kubernetes version the chart
claims (Chart.yaml kubeVersion) and the newest kubernetes-validate ships. Verdicts are data: the
calling test decides; this program fails only when a scenario does not render or a tool
cannot run.

It knows nothing of the chart it checks beyond the plan.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, all_versions
from packaging.version import Version

# Kinds defined by CustomResourceDefinitions that kubernetes-validate has no schema for (it knows
# only the built-in API): they are skipped explicitly, and any other missing schema is an error.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator CRD",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "Prometheus Operator CRD",
}


class StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice (PyYAML keeps the last; the API server may not)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        for key in keys:
            if keys.count(key) > 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", node.start_mark
                )
        return super().construct_mapping(node, deep)


def kube_versions(chart):
    """The oldest version Chart.yaml's kubeVersion admits and the newest with schemas."""
    shipped = sorted((Version(v) for v in all_versions()))
    claim = chart.metadata.get("kubeVersion", "")
    found = re.fullmatch(r"\s*>=\s*v?(\d+\.\d+)(\.\d+)?(-0)?\s*", claim)
    if not found:
        sys.exit(f"Chart.yaml kubeVersion {claim!r} is not of the form '>=1.NN.0-0'")
    oldest = Version(found.group(1))
    if not any(v.major == oldest.major and v.minor == oldest.minor for v in shipped):
        sys.exit(f"kubernetes-validate ships no schemas for {oldest}, the oldest version claimed")
    newest = shipped[-1]
    return [f"{oldest.major}.{oldest.minor}", f"{newest.major}.{newest.minor}"]


def render(chart, values, release, namespace):
    """The rendered objects as [{"template", "object"}], or the error Helm gives."""
    try:
        manifests = chart.render(values, name=release, namespace=namespace, is_install=True)
    except helm.HelmError as error:
        return None, str(error)
    objects = []
    for template, text in sorted(manifests.items()):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        try:
            documents = list(yaml.load_all(text, Loader=StrictLoader))
        except yaml.YAMLError as error:
            return None, f"{template} renders to invalid YAML: {error}\n{text}"
        objects += [{"template": template, "object": d} for d in documents if d]
    return objects, None


def validate(objects, versions):
    """kubernetes-validate's complaints, and the objects it was told to skip."""
    invalid, skipped = [], []
    for entry in objects:
        obj = entry["object"]
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} ({entry['template']})"
        if (obj.get("apiVersion"), obj.get("kind")) in CRD_KINDS:
            skipped.append(name)
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                invalid.append(f"{name} on Kubernetes {version}: {path}: {error.message}")
            except SchemaNotFoundError as error:
                invalid.append(f"{name} on Kubernetes {version}: {error.message}")
    return invalid, skipped


def lint(chart_dir, values, namespace, versions):
    """helm lint --strict's warnings and errors (info findings such as 'icon is recommended'
    are left out), per Kubernetes version."""
    findings = []
    for version in versions:
        report = helm.lint(
            chart_dir, values, strict=True, namespace=namespace, kube_version=f"v{version}.0"
        )
        findings += [
            f"Kubernetes {version}: {m['path']}: {m['error']}"
            for m in report["messages"]
            if m["severity"] >= 2
        ]
        findings += [f"Kubernetes {version}: {e}" for e in report.get("errors") or []]
    return findings


def checkov(executable, scenarios):
    """checkov's failed and skipped checks over the given scenarios' manifests."""
    with tempfile.TemporaryDirectory() as directory:
        for name, objects in scenarios.items():
            documents = [entry["object"] for entry in objects]
            Path(directory, f"{name}.yaml").write_text(yaml.safe_dump_all(documents))
        result = subprocess.run(
            [executable, "--compact", "--skip-download", "--framework", "kubernetes",
             "--output", "json", "--directory", directory],
            capture_output=True, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        )
    # Exit status 1 means "some check failed"; anything else unparsable is the tool failing.
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        sys.exit(f"checkov did not run (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    reports = report if isinstance(report, list) else [report]

    def entry(check):
        return {
            "id": check["check_id"],
            "name": check["check_name"],
            "resource": check["resource"],
            "file": Path(check["file_path"]).name,
            "reason": (check.get("check_result") or {}).get("suppress_comment"),
        }

    failed, skipped, passed = [], [], 0
    for r in reports:
        if "results" not in r:
            continue  # an empty scan prints a summary only
        failed += [entry(c) for c in r["results"].get("failed_checks", [])]
        skipped += [entry(c) for c in r["results"].get("skipped_checks", [])]
        passed += len(r["results"].get("passed_checks", []))
    return {"failed": failed, "skipped": skipped, "passed": passed}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart")
    parser.add_argument("plan", type=argparse.FileType())
    parser.add_argument("--checkov", required=True, help="the checkov executable")
    args = parser.parse_args()
    plan = json.load(args.plan)
    release, namespace = plan["release"], plan["namespace"]

    chart = helm.Chart.load(args.chart)
    versions = kube_versions(chart)
    out = {"kube_versions": versions, "scenarios": {}, "rejections": {}}
    for name, values in plan["scenarios"].items():
        objects, error = render(chart, values, release, namespace)
        if error is not None:
            sys.exit(f"scenario {name}: the chart does not render: {error}")
        invalid, skipped = validate(objects, versions)
        out["scenarios"][name] = {
            "objects": objects,
            "lint": lint(args.chart, values, namespace, versions),
            "invalid": invalid,
            "not_validated": skipped,
        }
    for name, values in plan["rejections"].items():
        _, error = render(chart, values, release, namespace)
        out["rejections"][name] = error
    out["checkov"] = checkov(
        args.checkov, {name: out["scenarios"][name]["objects"] for name in plan["checkov"]}
    )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
