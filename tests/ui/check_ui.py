"""Drive hookshim's /ui in headless Chromium through chromedriver (W3C WebDriver over HTTP,
standard library only). Run by tests/it/ui.rs against the real binary:

    check_ui.py --url http://127.0.0.1:PORT --token T --op OP_ID --failed OP_ID \
        --chromedriver /usr/bin/chromedriver --chromium /usr/bin/chromium

Checks, each printed: the page asks for the token; an operation appears; its timeline shows the
callback; the upstream's budget is shown; the delivery filter; a failed delivery is redelivered
with the button. Prints "ui: N passed, M failed" and exits 1 on a failure.
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    def __init__(self, chromedriver, chromium, profile):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [chromedriver, f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while True:
            try:
                if self.call("GET", "/status")["ready"]:
                    break
            except (OSError, urllib.error.URLError):
                pass
            if time.time() > deadline:
                raise SystemExit("chromedriver did not start within 30 s")
            time.sleep(0.1)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            f"--user-data-dir={profile}",
                        ],
                    },
                }
            }
        }
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"webdriver {method} {path}: {e.code} {e.read()[:500]!r}")

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css):
        return self.s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def click(self, css):
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css, text):
        self.s("POST", f"/element/{self.find(css)}/value", {"text": text})

    def text(self, css):
        return self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css
        )

    def wait(self, what, check, limit=20):
        deadline = time.time() + limit
        last = None
        while time.time() < deadline:
            try:
                last = check()
                if last:
                    return last
            except RuntimeError as e:
                last = e
            time.sleep(0.1)
        raise AssertionError(f"{what}: not within {limit} s (last: {last!r})")

    def quit(self):
        try:
            self.s("DELETE", "")
        finally:
            self.proc.terminate()
            self.proc.wait(10)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--op", required=True, help="an operation whose callback was delivered")
    p.add_argument("--failed", required=True, help="an operation whose delivery failed")
    p.add_argument("--chromedriver", required=True)
    p.add_argument("--chromium", required=True)
    a = p.parse_args()

    passed, failed = 0, 0
    with tempfile.TemporaryDirectory() as profile:
        d = Driver(a.chromedriver, a.chromium, profile)
        try:
            checks = [
                ("the page asks for the token", lambda: token_required(d, a)),
                ("an operation appears", lambda: operation_appears(d, a)),
                ("its timeline shows the callback", lambda: timeline_shows_callback(d, a)),
                ("the upstream's budget and rate", lambda: upstream_budget(d)),
                ("the delivery filter", lambda: delivery_filter(d, a)),
                ("redeliver works", lambda: redeliver_works(d, a)),
            ]
            for name, check in checks:
                try:
                    check()
                    passed += 1
                    print(f"ok: {name}")
                except Exception as e:  # report every check, then fail
                    failed += 1
                    print(f"FAILED: {name}: {e}")
                    print("  page message:", d.text("#message"))
        finally:
            d.quit()
    print(f"ui: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def token_required(d, a):
    d.go(a.url + "/ui")
    d.wait("a 401 asking for the token", lambda: "401 unauthorized" in (d.text("#message") or ""))
    assert "enter the API token" in d.text("#message")


def operation_appears(d, a):
    d.type("#token", a.token)
    d.click("#save-token")
    d.wait("the operation's row", lambda: d.text(f'#ops tr[data-id="{a.op}"]'))
    row = d.text(f'#ops tr[data-id="{a.op}"]')
    assert "succeeded" in row and "delivered" in row, row


def timeline_shows_callback(d, a):
    d.click(f'#ops button.op-link[data-id="{a.op}"]')
    d.wait("the timeline", lambda: "callback delivered" in (d.text("#timeline") or ""))
    items = d.js("return [...document.querySelectorAll('#timeline li')].map(li => li.textContent);")
    wanted = ["registered: jobs", "status read: done", "ended succeeded (detected via poll)",
              "callback attempt: answered 200", "callback delivered"]
    for w in wanted:
        assert any(w in i for i in items), f"{w!r} not in {items}"
    # In that order.
    firsts = [next(n for n, i in enumerate(items) if w in i) for w in wanted]
    assert firsts == sorted(firsts), items
    assert d.text("#detail-id") == a.op


def upstream_budget(d):
    row = d.wait("the jobs upstream", lambda: d.text('#upstreams tr[data-upstream="jobs"]'))
    cells = d.js(
        "return [...document.querySelectorAll('#upstreams tr[data-upstream=\"jobs\"] td')]"
        ".map(td => td.textContent);"
    )
    assert cells[1] == "50" and cells[2] == "5", cells
    assert float(cells[3]) > 0, cells


def delivery_filter(d, a):
    d.js("document.getElementById('delivery').value = 'failed';")
    d.click("#refresh")
    d.wait("only the failed one", lambda: d.text(f'#ops tr[data-id="{a.failed}"]')
           and not d.text(f'#ops tr[data-id="{a.op}"]'))
    d.js("document.getElementById('delivery').value = '';")
    d.click("#refresh")
    d.wait("both again", lambda: d.text(f'#ops tr[data-id="{a.op}"]'))


def redeliver_works(d, a):
    d.wait("the failed delivery", lambda: d.text(f'#failed tr[data-id="{a.failed}"]'))
    d.click(f'#failed button.redeliver[data-id="{a.failed}"]')
    d.wait("the redelivery message", lambda: f"redelivered {a.failed}" in (d.text("#message") or ""))
    d.wait("the row to leave the failed list",
           lambda: not d.text(f'#failed tr[data-id="{a.failed}"]'))


if __name__ == "__main__":
    main()
