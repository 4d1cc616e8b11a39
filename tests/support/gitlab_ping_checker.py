#!/usr/bin/env python3
"""A checker written for GitLab, from GitLab's protocol only (the protocol document's "The ping
body" and the status API), sharing no code or knowledge with extctl.

On each ping it verifies X-GitLab-Signature (HMAC-SHA256 of the raw body), reads the project
from `path_with_namespace` (as a checker in GitLab CI uses $CI_PROJECT_PATH) or, when GitLab
gives none, from `id`, and the control from
`project_control_compliance_status.compliance_requirements_control_id`; it answers 200 and
then reports `pass` through the status API, the project URL-encoded as python-gitlab does.

Usage: gitlab_ping_checker.py --token-file F (--api-url URL | --api-url-file F) --log FILE
(the file is read at each ping: for a server started after the checker)
Prints the port it listens on (127.0.0.1), then serves until killed. Each ping is logged as a
JSON line: what was read, whether the signature verified, and the status API's answer.
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
import urllib.parse
import urllib.request

from local_server import Handler, serve


def report(api_url, token, project, control, status):
    """GitLab's status API: PATCH, the three headers, the signed decoded path, a JSON body."""
    timestamp = str(int(time.time()))
    nonce = secrets.token_hex(16)
    signed_path = f"/api/v4/projects/{project}/compliance_external_controls/{control}/status"
    message = f"{timestamp}{nonce}{signed_path}status={status}".encode()
    signature = hmac.new(token, message, hashlib.sha256).hexdigest()
    encoded = urllib.parse.quote(str(project), safe="")
    url = f"{api_url}/api/v4/projects/{encoded}/compliance_external_controls/{control}/status"
    request = urllib.request.Request(
        url,
        data=json.dumps({"status": status}).encode(),
        method="PATCH",
        headers={
            "Content-Type": "application/json",
            "X-Gitlab-Timestamp": timestamp,
            "X-Gitlab-Nonce": nonce,
            "X-Gitlab-Hmac-Sha256": signature,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--token-file", required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--api-url", help="GitLab's (here extctl's) base URL")
    where.add_argument("--api-url-file", help="a file holding it, read at each ping")
    p.add_argument("--log", required=True)
    args = p.parse_args()
    with open(args.token_file, "rb") as f:
        token = f.read()

    class Server(Handler):
        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            expected = hmac.new(token, raw, hashlib.sha256).hexdigest()
            valid = hmac.compare_digest(expected, self.headers.get("X-GitLab-Signature", ""))
            self.send_response(200 if valid else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if not valid:
                self.record({"valid": False})
                return
            body = json.loads(raw)
            project = body.get("path_with_namespace") or body["id"]
            record = body["project_control_compliance_status"]
            control = record["compliance_requirements_control_id"]
            entry = {
                "valid": True,
                "project": project,
                "control": control,
                "pinged_status": record["status"],
                "updated_at": record["updated_at"],
            }

            # Answered first, then reported, as a checker that runs its check after the ping.
            def check():
                api_url = args.api_url
                # A ping may come before the file is written: wait for it (30 s at most).
                for _ in range(300):
                    if api_url:
                        break
                    try:
                        with open(args.api_url_file) as f:
                            api_url = f.read().strip()
                    except FileNotFoundError:
                        pass
                    time.sleep(0.1)
                code, answer = report(api_url, token, project, control, "pass")
                entry.update({"code": code, "answer": answer})
                self.record(entry)

            threading.Thread(target=check).start()

    serve(Server, args.log)


if __name__ == "__main__":
    sys.exit(main())
