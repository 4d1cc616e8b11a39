#!/usr/bin/env python3
"""Replays the requests recorded against a genuine kube-apiserver
(../shared/fixtures/kube-apiserver/, format in its README.md; tests/fixtures/kube-apiserver/ adds
cases 30+ and `[key="value"]` path tokens, see its v1.36/README.md) against another server (the
test harness), normalises the answers the same way, and prints, as one JSON list on stdout,
every significant path whose value differs: {"case", "step", "path", "recorded", "got"}.

Usage: replay_fixtures.py --server http://127.0.0.1:PORT --fixtures DIR [--fixtures DIR2 ...] [--only 05,10]
(directories in the order given, each one's cases in its index's order; case numbers are unique across them)

Standard library only; shares no code with the harness.
"""
import argparse
import datetime
import http.client
import json
import os
import re
import socket
import sys
import time
import urllib.parse

from fixture_format import PLACEHOLDER_RE, get_path, micro, normalise

MISSING = {"<missing>": True}


def value_at(root, path):
    """The value at a significant path, or MISSING."""
    found, value = get_path(root, path)
    return value if found else MISSING


class Replay:
    def __init__(self, server):
        url = urllib.parse.urlparse(server)
        self.host, self.port = url.hostname, url.port

    def request(self, method, path, query, headers, payload, watch):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        conn.request(method, target, body=payload, headers=headers)
        response = conn.getresponse()
        answer = {"status": response.status, "headers": {}}
        warnings = response.headers.get_all("Warning") or []
        if len(warnings) == 1:
            answer["headers"]["Warning"] = warnings[0]
        elif warnings:
            answer["headers"]["Warning"] = warnings
        if response.headers.get("Content-Type"):
            answer["headers"]["Content-Type"] = response.headers["Content-Type"]
        if watch is not None and response.status == 200:
            body = self.read_watch(conn, response, watch)
            answer["stream"] = "watch"
        else:
            raw = response.read()
            ctype = response.headers.get("Content-Type", "")
            # (kube-apiserver serves the OpenAPI v3 index, JSON, as text/plain; the recorder parsed it)
            parse = "json" in ctype or path.startswith("/openapi/")
            body = json.loads(raw) if raw and parse else (raw.decode() if raw else None)
        conn.close()
        return answer, body

    @staticmethod
    def read_watch(conn, response, idle_seconds):
        """Watch events until the server ends the stream or `idle_seconds` pass without data."""
        conn.sock.settimeout(idle_seconds)
        events, buf = [], b""
        # A server that keeps sending (bookmarks) is read for a bounded time, as the recorder did.
        deadline = time.monotonic() + 2 * idle_seconds
        try:
            while time.monotonic() < deadline:
                chunk = response.read1(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        events.append(json.loads(line))
        except (socket.timeout, TimeoutError, http.client.IncompleteRead, ConnectionError):
            pass
        if buf.strip():
            events.append(json.loads(buf))
        return events


def resolve(value, raw_bodies):
    if isinstance(value, dict):
        return {k: resolve(v, raw_bodies) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, raw_bodies) for v in value]
    if isinstance(value, str) and "{{" in value:
        return PLACEHOLDER_RE.sub(lambda m: placeholder(m.group(1), m.group(2), raw_bodies), value)
    return value


def placeholder(kind, arg, raw_bodies):
    if kind in ("rv", "continue", "uid"):
        body = raw_bodies[int(arg.removeprefix("step")) - 1]
        key = {"rv": "resourceVersion", "continue": "continue", "uid": "uid"}[kind]
        return ((body or {}).get("metadata") or {}).get(key, "")
    m = re.fullmatch(r"now(?:([+-])(\d+)([hms]))?", arg)
    dt = datetime.datetime.now(datetime.timezone.utc)
    if m.group(1):
        seconds = int(m.group(2)) * {"h": 3600, "m": 60, "s": 1}[m.group(3)]
        dt += datetime.timedelta(seconds=seconds if m.group(1) == "+" else -seconds)
    return micro(dt)


def replay_case(replay, name, case):
    raw_bodies, last_rv, differences = [], {}, []
    for number, step in enumerate(case["steps"], start=1):
        req, recorded = step["request"], step["response"]
        headers = {"Accept": "application/json"}
        if req.get("body_text") is not None:
            payload = req["body_text"]
        elif req.get("body") is not None:
            payload = json.dumps(resolve(req["body"], raw_bodies))
        else:
            payload = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
        headers.update(req.get("headers") or {})
        if payload is None:
            headers.pop("Content-Type", None)
        query = resolve(req.get("query") or {}, raw_bodies)
        watch = None
        # Read as a watch whenever one is asked for, even where the real server refused it, so a
        # server that streams instead is read for a bounded time.
        if recorded.get("stream") == "watch" or query.get("watch") == "true":
            watch = 5 if query.get("timeoutSeconds") else 3
        got, raw = replay.request(req["method"], resolve(req["path"], raw_bodies), query, headers,
                                  payload, watch)
        raw_bodies.append(raw)
        body = normalise(raw, name.startswith("12-"))
        if name.startswith("17-") and isinstance(body, dict):
            for field in ("nextPingTime", "lastUpdateTime"):
                if field in (body.get("status") or {}):
                    body["status"][field] = "<time>"
        got["body"] = body
        if isinstance(raw, dict) and watch is None and 200 <= got["status"] < 300:
            md = raw.get("metadata") or {}
            kind = raw.get("kind", "")
            if md.get("name") and md.get("resourceVersion") and kind not in ("Status", "Table") \
                    and not kind.endswith("List"):
                key = (kind, md.get("namespace", ""), md["name"])
                if key in last_rv:
                    got["rv_changed_from_previous"] = md["resourceVersion"] != last_rv[key]
                last_rv[key] = md["resourceVersion"]
        for path in step.get("significant", []):
            want, have = value_at(recorded, path), value_at(got, path)
            if want != have:
                differences.append({"case": name, "step": number, "path": path,
                                    "recorded": want, "got": have})
        for path in step.get("significant_unordered", []):
            want, have = value_at(recorded, path), value_at(got, path)
            key = lambda v: json.dumps(v, sort_keys=True)
            if not (isinstance(want, list) and isinstance(have, list)
                    and sorted(map(key, want)) == sorted(map(key, have))):
                differences.append({"case": name, "step": number, "path": path,
                                    "recorded": want, "got": have})
    return differences


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--fixtures", required=True, action="append")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    only = {int(n) for n in args.only.split(",") if n}
    replay = Replay(args.server)
    differences = []
    for fixtures in args.fixtures:
        with open(os.path.join(fixtures, "index.json")) as f:
            index = json.load(f)
        for name in index["cases"]:
            if only and int(name[:2]) not in only and int(name[:2]) != 0:
                continue
            with open(os.path.join(fixtures, name)) as f:
                case = json.load(f)
            started = time.monotonic()
            differences += replay_case(replay, name, case)
            print(f"{name}: {time.monotonic() - started:.1f} s", file=sys.stderr)
    json.dump(differences, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
