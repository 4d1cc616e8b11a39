"""Scrapes an OpenMetrics endpoint and prints its samples as one JSON object.

Parsed with the Prometheus project's own OpenMetrics parser (prometheus_client), not with
extctl's code, so a malformed exposition fails here. Output: {"content_type": ...,
"families": {name: type}, "samples": {'name{a="x",b="y"}': value}} with labels sorted.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode("utf-8")
    families, samples = {}, {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            if key in samples:
                raise SystemExit(f"duplicate sample {key}")
            samples[key] = sample.value
    json.dump({"content_type": content_type, "families": families, "samples": samples}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
