#!/usr/bin/env python3
"""A checker's ping endpoint, independent of extctl: verifies X-GitLab-Signature with Python's
hmac over the raw body, logs each ping as a JSON line, and answers with a fixed HTTP status.

Usage: ping_receiver.py --token-file F --code 200 [--location URL] --log FILE
Prints the port it listens on (127.0.0.1), then serves until killed.
"""

import argparse
import hashlib
import hmac
import json
import sys

from local_server import Handler, serve


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--token-file", required=True)
    p.add_argument("--code", type=int, default=200)
    p.add_argument("--location", help="a Location header to answer with (a redirect)")
    p.add_argument("--log", required=True)
    args = p.parse_args()
    with open(args.token_file, "rb") as f:
        token = f.read()

    class Server(Handler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            expected = hmac.new(token, body, hashlib.sha256).hexdigest()
            received = self.headers.get("X-GitLab-Signature", "")
            entry = {
                "valid": hmac.compare_digest(expected, received),
                "content_type": self.headers.get("Content-Type"),
                "body": json.loads(body or b"null"),
            }
            self.record(entry)
            self.send_response(args.code)
            if args.location:
                self.send_header("Location", args.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    serve(Server, args.log)


if __name__ == "__main__":
    sys.exit(main())
