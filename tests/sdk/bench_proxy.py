"""Proxy benchmark (issue 9): what the proxy saves the upstream, and what it costs the app.

    python tests/sdk/bench_proxy.py --hookshim target/release/hookshim [--mode proxy]
        [--replicas 10] [--rate 10] [--job-seconds 600] [--requests 2000] [--concurrency 4]

It starts the loopback fake providers (fake_providers.py) and the hookshim binary (the batch
preset's own polling schedule, config in a temp dir; the upstream's request budget lifted to
--budget, since every forwarded request waits for it), then:

1. Upstream requests: one OpenAI-shaped batch job that runs --job-seconds (default 600: a
   10-minute batch); --replicas app replicas each read its status --rate times a second until it is
   done. "without proxy": the replicas read the fake directly. "with proxy" (--mode proxy): the job
   is created through `/proxy/openai/v1/batches` and read through `/proxy/openai/v1/batches/{id}`,
   so the fake sees only hookshim's own reads. Both run at the same time, on two jobs.
2. Overhead: --requests sequential GETs on one keep-alive connection each, p50/p99 latency of
   the fake directly vs through the proxy, for a pass-through request (`GET /v1/models`, which no
   preset recognises) and for a cache hit (`GET /v1/batches/{id}` of the tracked job); then
   requests/s with --concurrency keep-alive clients for --seconds each.

--mode direct (the default, before the proxy exists) measures only the rows without the proxy.
Prints a table; writes JSON to target/bench/proxy.json (or --json). The client and the fake are
Python and share the machine with hookshim: read the added latency as an upper bound.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_providers import OPENAI_KEY, FakeProviders  # noqa: E402
from run_sdks import Hookshim  # noqa: E402

AUTH = {"Authorization": f"Bearer {OPENAI_KEY}", "Content-Type": "application/json"}


class Client:
    """One keep-alive HTTP/1.1 connection to base URL `base` (scheme http, loopback)."""

    def __init__(self, base: str) -> None:
        u = urllib.parse.urlsplit(base)
        self.host, self.port, self.prefix = u.hostname, u.port, u.path.rstrip("/")
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):
            try:
                self.conn.request(method, self.prefix + path, body=data, headers=AUTH)
                r = self.conn.getresponse()
                payload = r.read()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, payload
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def create_batch(base: str) -> tuple[str, dict]:
    c = Client(base)
    status, headers, body = c.request("POST", "/batches", {
        "input_file_id": "file-bench", "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    c.close()
    if status != 200:
        raise RuntimeError(f"create at {base} answered {status}: {body[:300]!r}")
    return json.loads(body)["id"], headers


def replicas(base: str, batch_id: str, n: int, rate: float, limit: float, out: dict) -> None:
    """n replicas, each reading the batch `rate` times a second until it is completed."""
    lock = threading.Lock()
    out.update(reads=0, hits=0, errors=0)

    def one() -> None:
        c = Client(base)
        nxt = time.monotonic()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            status, headers, body = c.request("GET", f"/batches/{batch_id}")
            with lock:
                out["reads"] += 1
                out["hits"] += headers.get("hookshim-cache", "").startswith("hit")
                out["errors"] += status != 200
            if status == 200 and json.loads(body).get("status") == "completed":
                break
            nxt += 1.0 / rate
            time.sleep(max(0.0, nxt - time.monotonic()))
        c.close()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def latencies(base: str, path: str, n: int, want_hit: bool = False) -> dict:
    c = Client(base)
    for _ in range(min(50, n)):  # warm up
        c.request("GET", path)
    times, hits = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        status, headers, _ = c.request("GET", path)
        times.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"GET {base}{path} answered {status}")
        hits += headers.get("hookshim-cache", "").startswith("hit")
    c.close()
    if want_hit and hits < n:
        raise RuntimeError(f"only {hits} of {n} reads of {base}{path} were Hookshim-Cache hits")
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3), "p99_ms": round(times[int(0.99 * (n - 1))], 3),
            "n": n}


def throughput(base: str, path: str, concurrency: int, seconds: float) -> float:
    count = [0] * concurrency
    stop = time.monotonic() + seconds

    def one(i: int) -> None:
        c = Client(base)
        while time.monotonic() < stop:
            c.request("GET", path)
            count[i] += 1
        c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return round(sum(count) / (time.monotonic() - t0), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hookshim", required=True, help="path of the hookshim binary (a release build)")
    ap.add_argument("--mode", choices=("direct", "proxy"), default="direct")
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--rate", type=float, default=10.0, help="reads per second per replica")
    ap.add_argument("--job-seconds", type=float, default=600.0)
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests per latency row")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each requests/s row")
    ap.add_argument("--budget", type=int, default=100000,
                    help="the upstream's rate.per_second (= burst): every forwarded request waits for it, "
                         "so the default lifts it to measure the proxy itself (hookshim's default is 10)")
    ap.add_argument("--json", default="target/bench/proxy.json")
    a = ap.parse_args()

    fake = FakeProviders(job_seconds=a.job_seconds).start()
    hs = Hookshim(a.hookshim, fake.url, a.mode, fast_poll=False, rate=a.budget)
    direct_base = f"{fake.url}/v1"
    proxy_base = f"{hs.url}/proxy/openai/v1"
    result: dict = {"budget_per_second": a.budget, "replicas": a.replicas, "rate": a.rate, "job_seconds": a.job_seconds, "mode": a.mode}
    try:
        # 1. upstream requests, with and without the proxy, side by side.
        print(f"1. {a.replicas} replicas x {a.rate:g} reads/s on a {a.job_seconds:g} s batch job ...", flush=True)
        runs = {"without_proxy": direct_base}
        if a.mode == "proxy":
            runs["with_proxy"] = proxy_base
        jobs, outs, threads = {}, {}, []
        for name, base in runs.items():
            jobs[name], headers = create_batch(base)
            if name == "with_proxy" and not headers.get("hookshim-operation-id"):
                raise RuntimeError(f"the proxied create was not registered: headers {headers}")
            outs[name] = {}
            threads.append(threading.Thread(target=replicas, args=(
                base, jobs[name], a.replicas, a.rate, a.job_seconds + 120, outs[name])))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counts = fake.counts()["jobs"]
        for name in runs:
            outs[name]["upstream_status_reads"] = counts[jobs[name]]["status_reads"]
        result["upstream"] = outs

        # 2. overhead: latency and requests/s, directly and through the proxy.
        lat = {"direct_pass_through": latencies(direct_base, "/models", a.requests),
               "direct_status_read": latencies(direct_base, f"/batches/{jobs['without_proxy']}", a.requests)}
        rps = {"direct_pass_through": throughput(direct_base, "/models", a.concurrency, a.seconds),
               "direct_status_read": throughput(direct_base, f"/batches/{jobs['without_proxy']}",
                                                a.concurrency, a.seconds)}
        if a.mode == "proxy":
            lat["proxy_pass_through"] = latencies(proxy_base, "/models", a.requests)
            lat["proxy_cache_hit"] = latencies(proxy_base, f"/batches/{jobs['with_proxy']}", a.requests,
                                               want_hit=True)
            rps["proxy_pass_through"] = throughput(proxy_base, "/models", a.concurrency, a.seconds)
            rps["proxy_cache_hit"] = throughput(proxy_base, f"/batches/{jobs['with_proxy']}",
                                                a.concurrency, a.seconds)
        result["latency"] = lat
        result["requests_per_second"] = rps
        result["cpus"] = os.cpu_count()
    finally:
        hs.stop()
        fake.stop()

    print()
    print(f"{'upstream status reads':<34} {'app reads':>10} {'cache hits':>10} {'upstream':>9}")
    for name, o in result["upstream"].items():
        print(f"  {name:<32} {o['reads']:>10} {o['hits']:>10} {o['upstream_status_reads']:>9}")
    if a.mode != "proxy":
        print("  with_proxy                       (run with --mode proxy)")
    print()
    print(f"{'latency, one keep-alive client':<34} {'p50 ms':>9} {'p99 ms':>9} {'req/s (' + str(a.concurrency) + ' clients)':>20}")
    for name, v in result["latency"].items():
        print(f"  {name:<32} {v['p50_ms']:>9.3f} {v['p99_ms']:>9.3f} {result['requests_per_second'][name]:>20}")
    if a.mode == "proxy":
        pt = lat["proxy_pass_through"]["p50_ms"] - lat["direct_pass_through"]["p50_ms"]
        pt99 = lat["proxy_pass_through"]["p99_ms"] - lat["direct_pass_through"]["p99_ms"]
        ch = lat["proxy_cache_hit"]["p50_ms"] - lat["direct_status_read"]["p50_ms"]
        ch99 = lat["proxy_cache_hit"]["p99_ms"] - lat["direct_status_read"]["p99_ms"]
        result["added_ms"] = {"pass_through_p50": round(pt, 3), "pass_through_p99": round(pt99, 3),
                              "cache_hit_p50": round(ch, 3), "cache_hit_p99": round(ch99, 3)}
        print(f"  added by the proxy: pass-through p50 {pt:+.3f} ms, p99 {pt99:+.3f} ms; "
              f"cache hit vs reading the fake p50 {ch:+.3f} ms, p99 {ch99:+.3f} ms")
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nJSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
