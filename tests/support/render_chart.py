#!/usr/bin/env python3
"""Renders a Helm chart with real Helm (Helm 4's engine, through helm-python-sdk) and prints the
rendered objects as one JSON array, in template order.

    render_chart.py CHART RELEASE NAMESPACE VALUES_JSON

As `helm install RELEASE CHART --namespace NAMESPACE` with VALUES_JSON (an object) would
render it. Fails, with Helm's message, when the chart does not render.
"""

import json
import sys

import helm_python as helm
import yaml


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    chart_dir, release, namespace, values = sys.argv[1:]
    chart = helm.Chart.load(chart_dir)
    try:
        manifests = chart.render(
            json.loads(values), name=release, namespace=namespace, is_install=True
        )
    except helm.HelmError as error:
        sys.exit(f"the chart does not render: {error}")
    objects = []
    for template, text in sorted(manifests.items()):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        objects += [d for d in yaml.safe_load_all(text) if d]
    json.dump(objects, sys.stdout)


if __name__ == "__main__":
    main()
