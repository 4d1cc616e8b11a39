#!/usr/bin/env python3
"""An external checker, written independently of extctl (Python's hmac and urllib only).

It signs a status call exactly as GitLab's documentation describes and sends it, so the
integration tests check extctl against an implementation that shares no code with it.
Knobs let a test break one thing at a time (a header, the signed status, the body shape).

Prints one JSON line: {"code": <http status>, "body": <parsed JSON or text>, "signature": ...}.
"""

import argparse
import hashlib
import hmac
import json
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HEADERS = {
    "timestamp": "X-Gitlab-Timestamp",
    "nonce": "X-Gitlab-Nonce",
    "signature": "X-Gitlab-Hmac-Sha256",
}


def sign(token: bytes, timestamp: str, nonce: str, path: str, status: str) -> str:
    message = f"{timestamp}{nonce}{path}status={status}".encode()
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def status_path(project: str, control: str) -> str:
    return f"/api/v4/projects/{project}/compliance_external_controls/{control}/status"


def encode_project(project: str, encoding: str) -> str:
    """The project as it goes in the URL: GitLab's `:id` is the id or the URL-encoded path.
    python-gitlab and gitbeaker encode `/` as %2F; GitLab's Go client also encodes `.` as %2E."""
    if encoding == "none":
        return project
    encoded = urllib.parse.quote(project, safe="")
    if encoding == "client-go":
        encoded = encoded.replace(".", "%2E")
    return encoded


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--project", required=True, help="id or full path, decoded (as signed)")
    p.add_argument(
        "--encoding",
        choices=["python-gitlab", "client-go", "none"],
        default="python-gitlab",
        help="how the project is encoded in the URL",
    )
    p.add_argument("--control", required=True)
    p.add_argument("--status", default="pass", help="status sent")
    p.add_argument("--token-file", required=True)
    p.add_argument("--timestamp", help="default: now")
    p.add_argument("--timestamp-offset", type=int, default=0, help="seconds added to now")
    p.add_argument("--nonce", help="default: 32 random hex characters")
    p.add_argument("--method", default="PATCH")
    p.add_argument("--body", choices=["json", "form", "query", "none"], default="json")
    p.add_argument("--omit-header", choices=list(HEADERS), action="append", default=[])
    p.add_argument("--blank-header", choices=list(HEADERS), action="append", default=[])
    p.add_argument("--sign-status", help="status signed, if not the one sent")
    p.add_argument("--sign-project", help="project in the signed path, if not the one sent")
    p.add_argument("--signature", help="send this signature instead of computing one")
    p.add_argument("--private-token", help="send a PRIVATE-TOKEN header, as GitLab's examples do")
    p.add_argument("--query", help="extra query string appended to the URL")
    p.add_argument("--raw-body", help="send this body as-is (with --content-type)")
    p.add_argument("--content-type")
    return p.parse_args(argv)


def build_request(args):
    with open(args.token_file, "rb") as f:
        token = f.read()
    timestamp = args.timestamp or str(int(time.time()) + args.timestamp_offset)
    nonce = args.nonce if args.nonce is not None else secrets.token_hex(16)
    signed_path = status_path(args.sign_project or args.project, args.control)
    signature = args.signature or sign(
        token, timestamp, nonce, signed_path, args.sign_status or args.status
    )

    headers = {HEADERS["timestamp"]: timestamp, HEADERS["nonce"]: nonce, HEADERS["signature"]: signature}
    for name in args.blank_header:
        headers[HEADERS[name]] = " "
    for name in args.omit_header:
        del headers[HEADERS[name]]
    if args.private_token:
        headers["PRIVATE-TOKEN"] = args.private_token

    url = args.url.rstrip("/") + status_path(encode_project(args.project, args.encoding), args.control)
    query = []
    body = None
    if args.raw_body is not None:
        body = args.raw_body.encode()
    elif args.body == "json":
        body = json.dumps({"status": args.status}).encode()
        headers["Content-Type"] = "application/json"
    elif args.body == "form":
        body = urllib.parse.urlencode({"status": args.status}).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif args.body == "query":
        query.append(urllib.parse.urlencode({"status": args.status}))
    if args.content_type:
        headers["Content-Type"] = args.content_type
    if args.query:
        query.append(args.query)
    if query:
        url += "?" + "&".join(query)
    request = urllib.request.Request(url, data=body, headers=headers, method=args.method)
    return request, signature


def main(argv):
    args = parse_args(argv)
    request, signature = build_request(args)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            code, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        code, raw = error.code, error.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    print(json.dumps({"code": code, "body": body, "signature": signature}))


if __name__ == "__main__":
    main(sys.argv[1:])
