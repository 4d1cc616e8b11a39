#!/usr/bin/env python3
"""A stand-in for GitLab's status API, independent of extctl: records every request it gets
(method, path, headers, body) as a JSON line, verifies the signature with Python's hmac as
GitLab does, and answers as GitLab would ({"status": ...} or {"error": ...}), unless told to
answer with a fixed code and body.

Usage: gitlab_stub.py --token-file F --log FILE [--code 502 --body TEXT]
Prints the port it listens on (127.0.0.1), then serves until killed.
"""

import argparse
import hashlib
import hmac
import json
import re
import sys
import urllib.parse

from local_server import Handler, serve

# GitLab's `:id` is the project's id or its URL-encoded path (no raw `/`); the signed path is
# rebuilt from the decoded parameters.
ROUTE = re.compile(r"^/api/v4/projects/([^/]+)/compliance_external_controls/(\d+)/status$")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--token-file", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--code", type=int)
    p.add_argument("--body", default="")
    args = p.parse_args()
    with open(args.token_file, "rb") as f:
        token = f.read().rstrip(b"\n")

    class Server(Handler):
        def do_PATCH(self):
            self.handle_call()

        def do_POST(self):
            self.handle_call()

        def handle_call(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            path = self.path.split("?", 1)[0]
            headers = {k.lower(): v for k, v in self.headers.items()}
            entry = {"method": self.command, "path": path, "headers": headers,
                     "body": body.decode()}
            self.record(entry)
            if args.code is not None:
                return self.answer(args.code, args.body.encode(), "text/html")
            route = ROUTE.match(path)
            if route is None:
                return self.json(404, {"message": "404 Not found"})
            status = json.loads(body or b"{}").get("status")
            timestamp = headers.get("x-gitlab-timestamp", "")
            nonce = headers.get("x-gitlab-nonce", "")
            project = urllib.parse.unquote(route.group(1))
            signed_path = (
                f"/api/v4/projects/{project}/compliance_external_controls/{route.group(2)}/status"
            )
            message = f"{timestamp}{nonce}{signed_path}status={status}".encode()
            expected = hmac.new(token, message, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, headers.get("x-gitlab-hmac-sha256", "")):
                return self.json(401, {"error": "Invalid signature"})
            self.json(200, {"status": status})

        def json(self, code, value):
            self.answer(code, json.dumps(value).encode(), "application/json")

        def answer(self, code, body, content_type):
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    serve(Server, args.log)


if __name__ == "__main__":
    sys.exit(main())
