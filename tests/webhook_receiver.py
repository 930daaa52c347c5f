"""A webhook receiver for the black-box tests (tests/webhooks.rs).

Every request is checked with `standardwebhooks`, the Standard Webhooks
authors' own library (from PyPI, in the venv `scripts/webhook-receiver-venv`
makes), against the secrets in --secret-file (one per line, read at each
request, so the test can write them after subscribing): it is verified if
one of them verifies it. One JSON line per request goes to
--out: the message id, whether the signature verified, the status answered
and the parsed body.

    python webhook_receiver.py --port-file F --secret-file S --out O
        [--fail-first N] [--delay SECONDS]

--fail-first N answers 500 to the first N requests (verified or not);
--delay waits before answering (a slow receiver).
"""

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--secret-file", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args()
    lock = threading.Lock()
    seen = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_a) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            headers = {k: v for k, v in self.headers.items()}
            payload, verified, error = None, False, "no secret"
            try:
                with open(args.secret_file, encoding="utf-8") as f:
                    secrets = f.read().split()
            except OSError as e:
                secrets, error = [], f"{type(e).__name__}: {e}"
            for secret in secrets:
                try:
                    payload = Webhook(secret).verify(body, headers)
                    verified, error = True, None
                    break
                except (WebhookVerificationError, ValueError) as e:
                    error = f"{type(e).__name__}: {e}"
            if args.delay:
                time.sleep(args.delay)
            with lock:
                seen["n"] += 1
                n = seen["n"]
                status = 500 if n <= args.fail_first else (200 if verified else 400)
                line = {
                    "n": n,
                    "id": self.headers.get("webhook-id"),
                    "verified": verified,
                    "error": error,
                    "status": status,
                    "payload": payload,
                    "path": self.path,
                }
                with open(args.out, "a", encoding="utf-8") as out:
                    out.write(json.dumps(line) + "\n")
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(args.port_file + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
