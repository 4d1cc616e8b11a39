"""The fixture file format, shared by the recorder (`tests/fixtures/kube-apiserver/record.py`,
run against a real kube-apiserver) and the replayer (`replay_fixtures.py`, run against the
harness): significant paths and how volatile values are normalised. One definition, so what
is compared on replay is exactly what was recorded. Standard library only.
"""

import datetime
import json
import re

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PLACEHOLDER_RE = re.compile(r"\{\{([a-z]+):([^}]*)\}\}")


def micro(dt):
    return dt.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


PATH_TOKEN_RE = re.compile(r'\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]|\["((?:[^"\\]|\\.)*)"\]'
                           r'|\[([A-Za-z_][A-Za-z0-9_.\-]*)="((?:[^"\\]|\\.)*)"\]')


class Select:
    """A `[key="value"]` path token: the first element of a list whose `key` (dotted for nested
    keys) is the string `value`. Used where the real server's list holds more (built-in API
    groups, resources) than a stand-in serves, so an index would not be meaningful."""

    def __init__(self, key, value):
        self.key, self.value = key.split("."), value

    def pick(self, cur):
        if not isinstance(cur, list):
            return False, None
        for item in cur:
            v = item
            for k in self.key:
                v = v.get(k) if isinstance(v, dict) else None
            if v == self.value:
                return True, item
        return False, None


def parse_path(path):
    """`status`, `body.a.b[0]["x.y/z"]` -> list of keys (str) / indices (int)."""
    m = re.match(r"[A-Za-z_][A-Za-z0-9_\-]*", path)
    if not m:
        raise ValueError(f"bad path {path!r}")
    out = [m.group(0)]
    pos = m.end()
    while pos < len(path):
        t = PATH_TOKEN_RE.match(path, pos)
        if not t:
            raise ValueError(f"bad path {path!r} at {pos}")
        if t.group(1) is not None:
            out.append(t.group(1))
        elif t.group(2) is not None:
            out.append(int(t.group(2)))
        elif t.group(3) is not None:
            out.append(json.loads('"' + t.group(3) + '"'))
        else:
            out.append(Select(t.group(4), json.loads('"' + t.group(5) + '"')))
        pos = t.end()
    return out


def get_path(root, path):
    """(found, value) for a path rooted at a step's response object."""
    cur = root
    for tok in parse_path(path):
        if isinstance(tok, Select):
            found, cur = tok.pick(cur)
            if not found:
                return False, None
        elif isinstance(tok, int):
            if not isinstance(cur, list) or tok >= len(cur):
                return False, None
            cur = cur[tok]
        else:
            if not isinstance(cur, dict) or tok not in cur:
                return False, None
            cur = cur[tok]
    return True, cur


OPENAPI_HASH_RE = re.compile(r"^(/openapi/v3/[^?]*\?hash=)[0-9A-Fa-f]+$")


def normalise(obj, keep_managed_fields=False):
    """Replace volatile values (uid, creation/deletion time, resourceVersion, continue tokens,
    the content hash in the OpenAPI v3 index's URLs)."""
    if isinstance(obj, str):
        return OPENAPI_HASH_RE.sub(r"\1<hash>", obj)
    if isinstance(obj, list):
        return [normalise(v, keep_managed_fields) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {k: normalise(v, keep_managed_fields) for k, v in obj.items()}
    md = out.get("metadata")
    if isinstance(md, dict):
        if md.get("uid"):
            md["uid"] = "<uid>"
        for k in ("creationTimestamp", "deletionTimestamp"):
            if md.get(k):
                md[k] = "<time>"
        if md.get("resourceVersion"):
            md["resourceVersion"] = "<rv>"
        if md.get("continue"):
            md["continue"] = "<continue>"
        if "managedFields" in md:
            if keep_managed_fields:
                for mf in md["managedFields"]:
                    if mf.get("time"):
                        mf["time"] = "<time>"
            else:
                del md["managedFields"]
    if out.get("kind") == "Status":
        det = out.get("details")
        if isinstance(det, dict) and det.get("uid"):
            det["uid"] = "<uid>"
        if isinstance(out.get("message"), str):
            out["message"] = normalise_message(out["message"])
        if isinstance(det, dict):
            for cause in det.get("causes") or []:
                if isinstance(cause.get("message"), str):
                    cause["message"] = normalise_message(cause["message"])
    return out


def normalise_message(msg):
    msg = UUID_RE.sub("<uid>", msg)
    msg = re.sub(r"too old resource version: (\d+) \((\d+)\)", r"too old resource version: \1 (<rv>)", msg)
    # a strict-decoding error of a patch quotes the whole patched object (uid, times, resourceVersion included)
    msg = re.sub(r'Invalid value: "\{.*\}": strict decoding error', 'Invalid value: "<patched object>": strict decoding error',
                 msg, flags=re.S)
    return msg
