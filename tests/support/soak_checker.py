#!/usr/bin/env python3
"""Concurrent checkers for the soak test, independent of extctl (Python's hmac and urllib).

Each thread owns some controls and reports for them in turn, alternating `pass` and `fail` per
control (so every accepted report changes the status), spreading calls over the given URLs (the
replicas). Prints one JSON list: per call {control, status, code, error, sent, answered}, times
in Unix seconds.

Usage: soak_checker.py --urls U1,U2 --token-file F --project 42 --controls 101,102 \
       --seconds 10 --threads 4 --pause 0.1
"""

import argparse
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request


def call(url, token, project, control, status):
    path = f"/api/v4/projects/{project}/compliance_external_controls/{control}/status"
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    message = f"{timestamp}{nonce}{path}status={status}".encode()
    request = urllib.request.Request(
        url + path,
        data=json.dumps({"status": status}).encode(),
        method="PATCH",
        headers={
            "Content-Type": "application/json",
            "X-Gitlab-Timestamp": timestamp,
            "X-Gitlab-Nonce": nonce,
            "X-Gitlab-Hmac-Sha256": hmac.new(token, message, hashlib.sha256).hexdigest(),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            body = json.loads(response.read())
            return response.status, None if body == {"status": status} else f"stored {body}", nonce
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace"), nonce
    except OSError as error:
        return None, str(error), nonce


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--urls", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--controls", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--pause", type=float, default=0.1, help="seconds between a thread's calls")
    args = p.parse_args()
    urls = args.urls.split(",")
    controls = args.controls.split(",")
    with open(args.token_file, "rb") as f:
        token = f.read()
    deadline = time.time() + args.seconds
    results, lock = [], threading.Lock()

    def worker(mine, offset):
        turn = offset
        next_status = {control: "pass" for control in mine}
        while time.time() < deadline:
            for control in mine:
                status = next_status[control]
                sent = time.time()
                code, error, nonce = call(urls[turn % len(urls)], token, args.project, control,
                                          status)
                turn += 1
                time.sleep(args.pause)
                if code == 200:
                    next_status[control] = "fail" if status == "pass" else "pass"
                with lock:
                    results.append({"control": int(control), "status": status, "code": code,
                                    "error": error, "sent": sent, "answered": time.time(),
                                    "nonce": nonce})

    threads = [
        threading.Thread(target=worker, args=(controls[i::args.threads], i))
        for i in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
