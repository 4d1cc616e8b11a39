#!/usr/bin/env python3
"""An outbound-call receiver independent of extctl: verifies each POST by every scheme extctl
may sign it with (GitLab's X-GitLab-Signature with Python's hmac, Standard Webhooks with the
`standardwebhooks` reference library, Flux's generic-hmac X-Signature with Python's hmac),
logs it as a JSON line, and answers with the next code of --codes (the last one repeats).
Over https with --cert/--key.

Usage: webhook_receiver.py --token-file F [--previous-file F] --codes 503,200 --log FILE
                           [--cert PEM --key PEM] [--hang-first SECONDS]
Prints the port it listens on (127.0.0.1), then serves until killed.
"""

import argparse
import hashlib
import hmac
import json
import ssl
import sys
import threading
import time

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from local_server import Handler, serve


def standard_valid(secret, body, headers):
    if secret is None:
        return None
    try:
        Webhook(secret.decode()).verify(body, headers)
        return True
    except (WebhookVerificationError, Exception):
        return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--token-file", required=True)
    p.add_argument("--previous-file")
    p.add_argument("--codes", default="200")
    p.add_argument("--log", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--hang-first", type=float, default=0)
    args = p.parse_args()
    with open(args.token_file, "rb") as f:
        token = f.read()
    previous = None
    if args.previous_file:
        with open(args.previous_file, "rb") as f:
            previous = f.read()
    codes = [int(c) for c in args.codes.split(",")]
    served = {"count": 0}
    lock = threading.Lock()

    class Server(Handler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                n = served["count"]
                served["count"] += 1
            headers = {k.lower(): v for k, v in self.headers.items()}
            gitlab = hmac.new(token, body, hashlib.sha256).hexdigest()
            flux = "sha256=" + gitlab
            entry = {
                "path": self.path,
                "headers": {
                    k: headers.get(k)
                    for k in [
                        "content-type",
                        "user-agent",
                        "webhook-id",
                        "webhook-timestamp",
                        "webhook-signature",
                        "x-signature",
                        "x-gitlab-signature",
                    ]
                },
                "gitlab_valid": hmac.compare_digest(gitlab, headers.get("x-gitlab-signature", "")),
                "flux_valid": hmac.compare_digest(flux, headers.get("x-signature", "")),
                "standard_valid": standard_valid(token, body, headers),
                "standard_previous_valid": standard_valid(previous, body, headers),
                "body": json.loads(body or b"null"),
                "received_at": time.time(),
            }
            self.record(entry)
            if n == 0 and args.hang_first:
                time.sleep(args.hang_first)
            self.send_response(codes[min(n, len(codes) - 1)])
            self.send_header("Content-Length", "0")
            self.end_headers()

    wrap = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        wrap = context
    serve(Server, args.log, wrap)


if __name__ == "__main__":
    sys.exit(main())
