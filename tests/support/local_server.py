"""What the test servers share: a quiet handler base, and serving on a free loopback port that
is printed first (the Rust side reads it to know where to connect)."""

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json


class Handler(BaseHTTPRequestHandler):
    """Writes each request's record to the JSON-lines log given to `serve`."""

    log_path = None

    def record(self, entry):
        with open(self.log_path, "a") as log:
            log.write(json.dumps(entry) + "\n")

    def log_message(self, *_):
        pass


def serve(handler, log_path, tls=None):
    """Serves on a free loopback port (over TLS with the `ssl.SSLContext` `tls`)."""
    handler.log_path = log_path
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()
