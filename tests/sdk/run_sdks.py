"""The real-SDK proof (issue 9): the unmodified `openai`, `google-genai` and `anthropic` SDKs
(pinned in tests/sdk/requirements.txt) create a batch job at a loopback fake provider
(fake_providers.py) and poll it every 100 ms with their own retrieve/get until it is done.

    python tests/sdk/run_sdks.py --hookshim target/debug/hookshim [--mode direct|proxy]

It starts the fakes, a callback receiver and the hookshim binary itself (config in a temp dir,
loopback only), and stops them all at the end.

Modes:
  direct  the SDK's base URL is the fake itself; the app registers each job with hookshim through
          `POST /v1/operations` (with a callback URL) — how hookshim is adopted without the proxy.
  proxy   the SDK's base URL is hookshim's proxy, `http://127.0.0.1:PORT/proxy/<upstream>/…`
          (issue 9's contract); the create carries `Hookshim-Callback-Url`, its response must carry
          `Hookshim-Operation-Id`, and the status reads are answered from hookshim's cache
          (`Hookshim-Cache: hit; …`), so the provider sees only hookshim's own adaptive reads.

For each SDK it asserts: the SDK objects parse (the SDK's own types come back), the final state is
right, how many status reads the provider saw (direct: the app's 100 ms loop plus at most
MAX_HOOKSHIM_READS of hookshim's; proxy: at most MAX_HOOKSHIM_READS in all, while the app read many
times), and that exactly one callback arrived for the job, verified with the `standardwebhooks`
package. One line per SDK, then `N passed, N failed`; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_providers import ANTHROPIC_KEY, GEMINI_KEY, OPENAI_KEY, FakeProviders  # noqa: E402

SDKS = ("openai", "gemini", "anthropic")
# hookshim's own status reads of one job that ends after --job-seconds (3 s) with the polling
# config written below (initial 1 s, max 2 s): about 3; allow some slack for slow CI machines.
MAX_HOOKSHIM_READS = 8
POLL_EVERY = 0.1
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"hookshim-sdk-proof-secret-32byte").decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the callback receiver ------------------------------------------------------------------------


class Receiver:
    """Collects every POST (headers, body); answers 204."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[dict, bytes]] = []
        owner = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                with owner.lock:
                    owner.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verified_for(self, operation: str) -> list[dict]:
        """Every callback about `operation` (the upstream's id), each verified; raises on a bad one."""
        from standardwebhooks.webhooks import Webhook

        wh = Webhook(CALLBACK_SECRET)
        out = []
        with self.lock:
            calls = list(self.calls)
        for headers, body in calls:
            payload = wh.verify(body, headers)  # raises WebhookVerificationError when forged
            data = payload.get("data", {})
            if data.get("operation") == operation or data.get("operation") == operation.removeprefix("batches/"):
                out.append({"webhook_id": headers.get("webhook-id"), **payload})
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- hookshim, the child process --------------------------------------------------------------------


def config_text(port: int, data_dir: str, fake_url: str, mode: str, fast_poll: bool = True,
                rate: int | None = None) -> str:
    proxy = "proxy = { enabled = true }\n" if mode == "proxy" else ""
    # bench_proxy.py lifts the request budget (10/s by default), which every forwarded request
    # passes, so that it measures the proxy and not the budget.
    proxy += f"rate = {{ per_second = {rate}, burst = {rate} }}\n" if rate else ""
    # Jobs here end after a few seconds: poll them at least every 2 s (the batch presets' own
    # schedule starts at 10 s). bench_proxy.py keeps the presets' schedule (fast_poll=False).
    poll = 'poll = { initial = "1s", max = "2s", finalizing = "1s", eta_max = "2s", jitter = 0.05 }\n'
    poll = poll if fast_poll else ""
    return f"""# written by tests/sdk/run_sdks.py ({mode} mode)
[server]
listen = "127.0.0.1:{port}"

[store]
path = "{data_dir}"

[callbacks]
allowed_hosts = ["127.0.0.1"]
timeout = "5s"
retry_schedule = ["1s", "2s", "5s"]

# The SDKs talk to /v1/ (google-genai 3.x included); gemini's preset default is /v1beta/, kept
# here so that version variants meet.
[upstreams.openai]
preset = "openai-batch"
base_url = "{fake_url}/v1/"
{poll}{proxy}
[upstreams.gemini]
preset = "gemini-batch"
base_url = "{fake_url}/v1beta/"
{poll}{proxy}
[upstreams.anthropic]
preset = "anthropic-batch"
base_url = "{fake_url}/v1/"
{poll}{proxy}"""


class Hookshim:
    def __init__(self, binary: str, fake_url: str, mode: str, fast_poll: bool = True,
                 rate: int | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="hookshim-sdk-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = os.path.join(self.dir, "shim.toml")
        with open(self.config, "w") as f:
            f.write(config_text(self.port, os.path.join(self.dir, "data"), fake_url, mode, fast_poll, rate))
        env = {k: v for k, v in os.environ.items() if k not in ("HOOKSHIM_API_TOKEN", "HOOKSHIM_CONFIG")}
        env.update(
            HOOKSHIM_CALLBACK_SECRET=CALLBACK_SECRET,
            HOOKSHIM_LOG=env.get("HOOKSHIM_LOG", "info"),
            OPENAI_API_KEY=OPENAI_KEY,
            GEMINI_API_KEY=GEMINI_KEY,
            ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        )
        self.log_path = os.path.join(self.dir, "hookshim.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "--config", self.config, "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hookshim exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"hookshim not healthy within 30 s:\n{self.logs()}")
            time.sleep(0.05)

    def register(self, upstream: str, operation: str, callback_url: str) -> dict:
        body = json.dumps({"upstream": upstream, "operation": operation, "callback_url": callback_url}).encode()
        req = urllib.request.Request(f"{self.url}/v1/operations", data=body, method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def logs(self) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- response headers, seen through each SDK's own HTTP client hooks ------------------------------


class HeaderLog:
    """An httpx `response` event hook: keeps (method, path, status, headers) of every response."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, int, dict]] = []

    def __call__(self, response) -> None:
        with self.lock:
            self.seen.append((response.request.method, response.request.url.path, response.status_code,
                              {k.lower(): v for k, v in response.headers.items()}))

    def creates(self) -> list[dict]:
        with self.lock:
            return [h for (m, _p, _s, h) in self.seen if m == "POST"]

    def reads(self) -> list[dict]:
        with self.lock:
            return [h for (m, _p, _s, h) in self.seen if m == "GET"]


# -- one SDK each: create, then poll with the SDK's own retrieve/get until done ---------------------


def poll_until(fn, is_done, limit: float):
    """Call the SDK's read every POLL_EVERY until `is_done`; returns (last object, reads)."""
    reads = 0
    deadline = time.time() + limit
    while True:
        obj = fn()
        reads += 1
        if is_done(obj):
            return obj, reads
        if time.time() > deadline:
            raise AssertionError(f"not done after {limit:.0f} s and {reads} reads: last {obj!r}")
        time.sleep(POLL_EVERY)


def run_openai(base_url: str, extra_headers: dict, log: HeaderLog, limit: float, after_create):
    import openai
    from openai.types import Batch, FileObject

    client = openai.OpenAI(api_key=OPENAI_KEY, base_url=base_url, max_retries=0,
                           http_client=openai.DefaultHttpxClient(event_hooks={"response": [log]}))
    lines = b'{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    f = client.files.create(file=("batch.jsonl", lines), purpose="batch")
    assert isinstance(f, FileObject), f"files.create gave {type(f)}"
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              extra_headers=extra_headers)
    assert isinstance(b, Batch) and b.id and b.status in ("validating", "in_progress"), repr(b)
    after_create(b.id)
    final, reads = poll_until(lambda: client.batches.retrieve(b.id),
                              lambda x: x.status in ("completed", "failed", "expired", "cancelled"), limit)
    assert isinstance(final, Batch), type(final)
    assert final.status == "completed", f"final status {final.status}"
    assert final.output_file_id and final.request_counts and final.request_counts.completed == final.request_counts.total
    return b.id, final.status, reads


def run_gemini(base_url: str, extra_headers: dict, log: HeaderLog, limit: float, after_create):
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=GEMINI_KEY, http_options=types.HttpOptions(
        base_url=base_url, client_args={"event_hooks": {"response": [log]}},
        retry_options=types.HttpRetryOptions(attempts=1)))
    config = types.CreateBatchJobConfig(display_name="sdk-proof",
                                        http_options=types.HttpOptions(headers=extra_headers) if extra_headers else None)
    job = client.batches.create(
        model="gemini-2.5-flash",
        src=[{"contents": [{"parts": [{"text": "hello"}], "role": "user"}]},
             {"contents": [{"parts": [{"text": "again"}], "role": "user"}]}],
        config=config,
    )
    assert isinstance(job, types.BatchJob) and job.name and job.name.startswith("batches/"), repr(job)
    assert job.state == types.JobState.JOB_STATE_PENDING, repr(job.state)
    after_create(job.name)
    ended = {types.JobState.JOB_STATE_SUCCEEDED, types.JobState.JOB_STATE_FAILED,
             types.JobState.JOB_STATE_CANCELLED, types.JobState.JOB_STATE_EXPIRED}
    final, reads = poll_until(lambda: client.batches.get(name=job.name), lambda x: x.state in ended, limit)
    assert isinstance(final, types.BatchJob), type(final)
    assert final.state == types.JobState.JOB_STATE_SUCCEEDED, f"final state {final.state}"
    assert final.dest and final.dest.inlined_responses and len(final.dest.inlined_responses) == 2, repr(final.dest)
    return job.name, final.state.value, reads


def run_anthropic(base_url: str, extra_headers: dict, log: HeaderLog, limit: float, after_create):
    import anthropic
    from anthropic.types.messages import MessageBatch

    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=base_url, max_retries=0,
                                 http_client=anthropic.DefaultHttpxClient(event_hooks={"response": [log]}))
    mb = client.messages.batches.create(
        requests=[{"custom_id": "r1", "params": {"model": "claude-sonnet-4-5", "max_tokens": 16,
                                                 "messages": [{"role": "user", "content": "hello"}]}}],
        extra_headers=extra_headers,
    )
    assert isinstance(mb, MessageBatch) and mb.processing_status == "in_progress", repr(mb)
    after_create(mb.id)
    final, reads = poll_until(lambda: client.messages.batches.retrieve(mb.id),
                              lambda x: x.processing_status == "ended", limit)
    assert isinstance(final, MessageBatch), type(final)
    assert final.request_counts.succeeded == 1 and final.results_url, repr(final)
    return mb.id, final.processing_status, reads


RUNNERS = {"openai": run_openai, "gemini": run_gemini, "anthropic": run_anthropic}


def base_url(sdk: str, mode: str, fake_url: str, hookshim_url: str) -> str:
    if mode == "direct":
        return {"openai": f"{fake_url}/v1", "gemini": f"{fake_url}/", "anthropic": fake_url}[sdk]
    return {
        "openai": f"{hookshim_url}/proxy/openai/v1",  # OpenAI's paths carry no version: it is in the base
        "gemini": f"{hookshim_url}/proxy/gemini/",  # google-genai adds /v1/ itself
        "anthropic": f"{hookshim_url}/proxy/anthropic",  # Anthropic's paths carry /v1
    }[sdk]


def check_one(sdk: str, mode: str, fake: FakeProviders, hookshim: Hookshim, receiver: Receiver,
              job_seconds: float) -> str:
    log = HeaderLog()
    extra = {"Hookshim-Callback-Url": receiver.url} if mode == "proxy" else {}
    url = base_url(sdk, mode, fake.url, hookshim.url)
    if mode == "direct":
        # Adoption without the proxy: the app registers the job it created with hookshim.
        def after_create(job_id: str) -> None:
            hookshim.register(sdk, job_id, receiver.url)
    else:
        def after_create(job_id: str) -> None:
            pass
    job_id, state, app_reads = RUNNERS[sdk](url, extra, log, job_seconds + 60, after_create)

    if mode == "proxy":
        creates = log.creates()
        op_ids = [h.get("hookshim-operation-id") for h in creates if h.get("hookshim-operation-id")]
        assert len(op_ids) == 1 and op_ids[0].startswith("op_"), \
            f"create responses carried Hookshim-Operation-Id {op_ids} (headers {creates[-1] if creates else None})"
        errors = [h.get("hookshim-error") for h in creates if h.get("hookshim-error")]
        assert not errors, f"create answered Hookshim-Error {errors}"

    counts = fake.counts()["jobs"].get(job_id)
    assert counts, f"the provider never saw job {job_id}"
    provider_reads = counts["status_reads"]
    if mode == "direct":
        hookshim_reads = provider_reads - app_reads
        assert 0 < hookshim_reads <= MAX_HOOKSHIM_READS, \
            f"provider saw {provider_reads} reads for {app_reads} app reads: hookshim made {hookshim_reads}"
        reads_note = f"provider saw {provider_reads} status reads ({app_reads} app + {hookshim_reads} hookshim)"
    else:
        hits = sum(1 for h in log.reads() if h.get("hookshim-cache", "").startswith("hit"))
        assert app_reads >= 10, f"only {app_reads} app reads: the job ended too soon to tell"
        assert provider_reads <= MAX_HOOKSHIM_READS, \
            f"provider saw {provider_reads} status reads for {app_reads} app reads (at most {MAX_HOOKSHIM_READS})"
        assert hits >= app_reads - MAX_HOOKSHIM_READS, f"only {hits} of {app_reads} reads were Hookshim-Cache hits"
        reads_note = f"{app_reads} app reads ({hits} cache hits), provider saw {provider_reads}"

    # Exactly one verified callback for this job.
    deadline = time.time() + 30
    got: list[dict] = []
    while time.time() < deadline:
        got = receiver.verified_for(job_id)
        if got:
            break
        time.sleep(0.1)
    assert got, f"no callback for {job_id} within 30 s"
    time.sleep(1.0)  # a second one would come now (retry schedule starts at 1 s)
    got = receiver.verified_for(job_id)
    assert len({c["webhook_id"] for c in got}) == 1, f"callbacks with different webhook-ids: {got}"
    assert len(got) == 1, f"{len(got)} callbacks for {job_id} (one expected)"
    cb = got[0]
    assert cb["type"] == "operation.succeeded", f"callback type {cb['type']}"
    if mode == "proxy":
        assert cb["data"]["id"] == op_ids[0], f"callback for {cb['data']['id']}, create said {op_ids[0]}"
    return f"{job_id} {state}; {reads_note}; callback {cb['type']} verified"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hookshim", required=True, help="path of the hookshim binary")
    ap.add_argument("--mode", choices=("direct", "proxy"), default=os.environ.get("HOOKSHIM_SDK_MODE", "direct"))
    ap.add_argument("--only", default=",".join(SDKS), help="comma-separated subset of " + ",".join(SDKS))
    ap.add_argument("--job-seconds", type=float, default=3.0)
    a = ap.parse_args()
    sdks = [s for s in a.only.split(",") if s]
    unknown = [s for s in sdks if s not in RUNNERS]
    if unknown:
        print(f"--only: unknown SDK {unknown}; write some of {','.join(SDKS)}", file=sys.stderr)
        return 2

    fake = FakeProviders(job_seconds=a.job_seconds).start()
    receiver = Receiver()
    hookshim = None
    passed = failed = 0
    try:
        hookshim = Hookshim(a.hookshim, fake.url, a.mode)
        with concurrent.futures.ThreadPoolExecutor(len(sdks)) as pool:
            futures = {s: pool.submit(check_one, s, a.mode, fake, hookshim, receiver, a.job_seconds)
                       for s in sdks}
            for s in sdks:
                try:
                    note = futures[s].result()
                    print(f"PASS {s} ({a.mode}): {note}", flush=True)
                    passed += 1
                except Exception as e:  # noqa: BLE001 - report every failure, go on
                    print(f"FAIL {s} ({a.mode}): {type(e).__name__}: {e}", flush=True)
                    traceback.print_exc(file=sys.stderr)
                    failed += 1
        if failed:
            print("----- hookshim log (tail) -----", file=sys.stderr)
            print(hookshim.logs(), file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - the harness itself failed
        print(f"FAIL harness: {type(e).__name__}: {e}", flush=True)
        failed += len(sdks) - passed
    finally:
        if hookshim:
            hookshim.stop()
        receiver.stop()
        fake.stop()
    print(f"sdk: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
