"""A callback receiver for trying hookshim by hand (docs/migration.md, step 2): it verifies every
POST with the `standardwebhooks` package and the secret in HOOKSHIM_CALLBACK_SECRET, prints the
event, and answers 204 (401 when the signature does not verify, so hookshim retries).

    HOOKSHIM_CALLBACK_SECRET=whsec_... python tests/sdk/receiver.py --port 9000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=9000)
    a = ap.parse_args()
    secret = os.environ.get("HOOKSHIM_CALLBACK_SECRET")
    if not secret:
        print("set HOOKSHIM_CALLBACK_SECRET to the secret hookshim signs with (whsec_...)", file=sys.stderr)
        return 2
    wh = Webhook(secret)

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                event = wh.verify(body, {k.lower(): v for k, v in self.headers.items()})
                d = event.get("data", {})
                print(f"verified {self.headers.get('webhook-id')}: {event.get('type')} "
                      f"{d.get('upstream')}/{d.get('operation')} {json.dumps(d.get('result'))}", flush=True)
                code = 204
            except WebhookVerificationError as e:
                print(f"REFUSED {self.headers.get('webhook-id')}: {e}", flush=True)
                code = 401
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", a.port), H)
    print(f"receiver on http://127.0.0.1:{a.port}/callback", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
