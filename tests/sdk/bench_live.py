"""Live benchmark (issue 13, benchmark 1b live): the real google-api-core `PollingFuture` against
the real `hookshim serve`, in real time on loopback, on the short-jobs workload of benchmark 1b.

    target/sdk-venv/bin/python tests/sdk/bench_live.py --hookshim target/release/hookshim
        [--warmup 100] [--jobs 300] [--warmup-window 100] [--window 300] [--seed 7]
        [--targets none,15,17] [--json target/bench/live.json]

Not a test: it prints figures (a Markdown table) and writes them as JSON.

Workload (benchmark 1b's "short jobs"): durations 5-60 s log-uniform (5 * 12**U), half of the
jobs report linear progress in 1 % steps (`metadata.progressPercent`), the other half report
nothing until done. --warmup jobs start over --warmup-window seconds; once every side has seen all
of them end, the --jobs measured jobs start over --window seconds. Only the measured jobs are in
the figures (the warm-up trains hookshim's learned job-length priors; api-core learns nothing but
runs it too, so that both sides see the same load).

Sides, all at the same time, each against its own fake upstream (same jobs, same start times):
- google-api-core: one thread per job runs the library's own polling loop,
  `google.api_core.operation.from_http_json(op, api_request, Struct).result()`, with the
  library's default polling (`polling.DEFAULT_POLLING` in google/api_core/future/polling.py:
  initial 1 s, multiplier 1.5, maximum 20 s, timeout 900 s; the sleeps come from
  `retry_base.exponential_sleep_generator`: uniform(0, current cap), so-called full jitter).
  `api_request` is a `requests.Session` GET of `/v1/{path}`, the role
  `google.cloud._http.JSONConnection.api_request` plays for a real client. Detection delay =
  when `result()` returned - the job's true end.
- hookshim, one upstream per `poll.target_delay` value (--targets; `none` = "off"), all in one
  `hookshim serve` process (the release binary): preset `google-operation` with the `general`
  job kind's schedule and `max = "20s"`, the same cap as api-core (as benchmark 1b), default
  request budget (10/s, burst 10) and learned priors (on by default). Each job is registered
  through `POST /v1/operations` when it starts; detection delay = when its callback reached the
  loopback receiver - the job's true end.

The fake upstream is shaped from google.longrunning.Operation (googleapis-common-protos,
google/longrunning/operations_proto.proto: `name`, `metadata` Any, `done`, oneof `error`/`response`
Any) in its proto3 JSON form (`done` and a zero `progressPercent` left out, as proto3 JSON does).
The metadata type mirrors `google.cloud.speech.v1.LongRunningRecognizeMetadata` (googleapis,
google/cloud/speech/v1/cloud_speech.proto: `int32 progress_percent = 1`); it is registered in the
protobuf pool here, as a generated client registers its own types, so that api-core can parse the
`Any`. hookshim's `google-operation` reads `/metadata/progressPercent` (src/upstream/google.rs).
The fake counts every status GET per job and records each job's true end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from google.api_core import operation as lro
from google.api_core.future import polling
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2
from standardwebhooks.webhooks import Webhook

CALLBACK_SECRET = "whsec_" + base64.b64encode(b"hookshim-live-bench-secret-32byt").decode()
META_TYPE = "hookshim.bench.v1.JobMetadata"


def job_metadata_class():
    """`JobMetadata { int32 progress_percent = 1; }` in the default pool (like speech v1's
    LongRunningRecognizeMetadata), so that json_format can resolve the metadata `Any`."""
    pool = descriptor_pool.Default()
    try:
        desc = pool.FindMessageTypeByName(META_TYPE)
    except KeyError:
        fdp = descriptor_pb2.FileDescriptorProto(
            name="hookshim_bench/job_metadata.proto", package="hookshim.bench.v1", syntax="proto3")
        m = fdp.message_type.add(name="JobMetadata")
        m.field.add(name="progress_percent", number=1, json_name="progressPercent",
                    type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
                    label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
        pool.Add(fdp)
        desc = pool.FindMessageTypeByName(META_TYPE)
    return message_factory.GetMessageClass(desc)


JobMetadata = job_metadata_class()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantile(v: list[float], q: float) -> float:
    """benchmark 1b's quantile (pareto.rs): the value at round((n-1)·q) of the sorted list."""
    if not v:
        return float("nan")
    s = sorted(v)
    return s[round((len(s) - 1) * q)]


class Job:
    def __init__(self, idx: int, offset: float, duration: float, progress: bool, warmup: bool) -> None:
        self.idx, self.offset, self.duration, self.progress, self.warmup = idx, offset, duration, progress, warmup
        self.name = f"j{idx}"


def workload(seed: int, warmup: int, jobs: int, warmup_window: float, window: float) -> list[Job]:
    """Benchmark 1b's short jobs: 5·12^U s, progress with probability ½; start offsets uniform
    over each phase's window (measured offsets are from the measured phase's start)."""
    rng = random.Random(seed)
    out = []
    for phase, n, w in ((True, warmup, warmup_window), (False, jobs, window)):
        offs = sorted(rng.random() * w for _ in range(n))
        for off in offs:
            out.append(Job(len(out), off, 5.0 * 12.0 ** rng.random(), rng.random() < 0.5, phase))
    return out


# -- the fake upstream: Google long-running Operations ---------------------------------------------


class FakeOperations:
    """`GET /v1/operations/{name}` → the Operation's proto3 JSON; every GET is counted per job."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.lock = threading.Lock()
        self.jobs: dict[str, tuple[Job, float]] = {}  # name -> (job, t0 monotonic)
        self.gets: dict[str, int] = {}
        self.get_times: list[float] = []
        self.first_done_answer: dict[str, float] = {}
        owner = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                now = time.monotonic()
                path = self.path.split("?", 1)[0]
                name = path.removeprefix("/v1/operations/")
                with owner.lock:
                    entry = owner.jobs.get(name) if path.startswith("/v1/operations/") else None
                    if entry is not None:
                        owner.gets[name] = owner.gets.get(name, 0) + 1
                        owner.get_times.append(now)
                if entry is None:
                    body = json.dumps({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}).encode()
                    code = 404
                else:
                    op = owner.operation(entry[0], entry[1], now)
                    if op.get("done"):
                        with owner.lock:
                            owner.first_done_answer.setdefault(name, now)
                    body, code = json.dumps(op).encode(), 200
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def operation(job: Job, t0: float, now: float) -> dict:
        el = now - t0
        op: dict = {"name": job.name}
        if el >= job.duration:
            op["done"] = True
            op["response"] = {"@type": "type.googleapis.com/google.protobuf.Struct",
                              "value": {"job": job.name, "seconds": round(job.duration, 3)}}
        elif job.progress:
            pct = min(99, int(100 * el / job.duration))
            op["metadata"] = {"@type": f"type.googleapis.com/{META_TYPE}"}
            if pct:
                op["metadata"]["progressPercent"] = pct
        return op

    def create(self, job: Job) -> tuple[dict, float]:
        """The job starts now (what `predictLongRunning` would answer): its Operation and t0."""
        t0 = time.monotonic()
        with self.lock:
            self.jobs[job.name] = (job, t0)
            self.gets.setdefault(job.name, 0)
        return self.operation(job, t0, t0), t0

    def true_end(self, name: str) -> float:
        job, t0 = self.jobs[name]
        return t0 + job.duration

    def peak_rate(self) -> int:
        """Most status GETs in any 1 s window (is hookshim's 10/s budget ever in the way?)."""
        with self.lock:
            ts = sorted(self.get_times)
        best, j = 0, 0
        for i, t in enumerate(ts):
            while ts[j] <= t - 1.0:
                j += 1
            best = max(best, i - j + 1)
        return best

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- side A: google-api-core ------------------------------------------------------------------------


class ApiCoreSide:
    def __init__(self, fake: FakeOperations) -> None:
        self.fake = fake
        self.base = f"http://127.0.0.1:{fake.port}/v1/"
        self.lock = threading.Lock()
        self.detected: dict[str, float] = {}
        self.errors: list[str] = []

    def start(self, job: Job) -> None:
        initial, _ = self.fake.create(job)
        threading.Thread(target=self._wait, args=(job, initial), daemon=True).start()

    def _wait(self, job: Job, initial: dict) -> None:
        session = requests.Session()

        def api_request(method: str, path: str):
            r = session.request(method, self.base + path, timeout=30)
            r.raise_for_status()
            return r.json()

        try:
            fut = lro.from_http_json(initial, api_request, struct_pb2.Struct, metadata_type=JobMetadata,
                                     polling=polling.DEFAULT_POLLING)
            fut.result()  # the library's own polling loop
            t = time.monotonic()
            with self.lock:
                self.detected[job.name] = t
        except Exception as e:  # noqa: BLE001 - reported, and the job counts as missing
            with self.lock:
                self.errors.append(f"{job.name}: {e!r}")
        finally:
            session.close()


# -- side B: hookshim serve -------------------------------------------------------------------------


class Receiver:
    """Callbacks at `/cb/{upstream}`; every one verified (standardwebhooks); first arrival kept."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first: dict[tuple[str, str], float] = {}
        self.count = 0
        self.duplicates = 0
        self.bad = 0
        wh = Webhook(CALLBACK_SECRET)
        owner = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                now = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    event = wh.verify(body, {k.lower(): v for k, v in self.headers.items()})
                    d = event["data"]
                    key = (d["upstream"], d["operation"].removeprefix("operations/"))
                    with owner.lock:
                        owner.count += 1
                        if key in owner.first:
                            owner.duplicates += 1
                        else:
                            owner.first[key] = now
                    code = 204
                except Exception:  # noqa: BLE001
                    with owner.lock:
                        owner.bad += 1
                    code = 401
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def upstream_name(target: str) -> str:
    return "live-none" if target == "none" else f"live-t{target}"


def config_text(port: int, data_dir: str, fakes: dict[str, FakeOperations]) -> str:
    out = [f"""# written by tests/sdk/bench_live.py
[server]
listen = "127.0.0.1:{port}"

[store]
path = "{data_dir}"

[callbacks]
allowed_hosts = ["127.0.0.1"]
"""]
    for target, fake in fakes.items():
        # benchmark 1b's hookshim: the `general` job kind (src/schedule/config.rs) with max 20 s;
        # `none` turns off the target the media kind ships (15 s).
        t = ', target_delay = "off"' if target == "none" else f', target_delay = "{target}s"'
        out.append(f"""[upstreams.{upstream_name(target)}]
preset = "google-operation"
base_url = "http://127.0.0.1:{fake.port}/v1/"
poll = {{ initial = "1s", multiplier = 1.5, max = "20s", eta_max = "10m", finalizing = "2s", deadline = "24h"{t} }}
""")
    return "\n".join(out)


class Hookshim:
    def __init__(self, binary: str, fakes: dict[str, FakeOperations]) -> None:
        self.dir = tempfile.mkdtemp(prefix="hookshim-live-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = os.path.join(self.dir, "shim.toml")
        with open(cfg, "w") as f:
            f.write(config_text(self.port, os.path.join(self.dir, "data"), fakes))
        env = {k: v for k, v in os.environ.items() if k not in ("HOOKSHIM_API_TOKEN", "HOOKSHIM_CONFIG")}
        env.update(HOOKSHIM_CALLBACK_SECRET=CALLBACK_SECRET, HOOKSHIM_LOG=env.get("HOOKSHIM_LOG", "warn"))
        self.log_path = os.path.join(self.dir, "hookshim.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary, "--config", cfg, "serve"], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
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

    def register(self, upstream: str, operation: str, callback_url: str) -> None:
        body = json.dumps({"upstream": upstream, "operation": operation, "callback_url": callback_url}).encode()
        req = urllib.request.Request(f"{self.url}/v1/operations", data=body, method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def upstreams(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/v1/upstreams", timeout=10) as r:
            return json.load(r)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


def machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


# -- the run ----------------------------------------------------------------------------------------


def summarise(label: str, jobs: list[Job], fake: FakeOperations, detected: dict[str, float]) -> dict:
    def subset(sel: list[Job]) -> dict:
        req = [fake.gets[j.name] for j in sel]
        delays = [detected[j.name] - fake.true_end(j.name) for j in sel if j.name in detected]
        return {
            "jobs": len(sel),
            "detected": len(delays),
            "requests_mean": sum(req) / max(1, len(req)),
            "requests_median": quantile(req, 0.5),
            "delay_p50_s": quantile(delays, 0.5),
            "delay_p99_s": quantile(delays, 0.99),
            "delay_max_s": max(delays) if delays else float("nan"),
            "delay_min_s": min(delays) if delays else float("nan"),
        }

    return {
        "side": label,
        "all": subset(jobs),
        "progress": subset([j for j in jobs if j.progress]),
        "blind": subset([j for j in jobs if not j.progress]),
        "peak_requests_per_s": fake.peak_rate(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hookshim", required=True, help="path of the hookshim binary (a release build)")
    ap.add_argument("--warmup", type=int, default=100, help="warm-up jobs, left out of the figures")
    ap.add_argument("--jobs", type=int, default=300, help="measured jobs")
    ap.add_argument("--warmup-window", type=float, default=100.0, help="seconds over which warm-up jobs start")
    ap.add_argument("--window", type=float, default=300.0, help="seconds over which measured jobs start")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--targets", default="none,15,17", help="hookshim poll.target_delay values (s), `none` = \"off\"")
    ap.add_argument("--json", default="target/bench/live.json")
    a = ap.parse_args()

    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    jobs = workload(a.seed, a.warmup, a.jobs, a.warmup_window, a.window)
    api_fake = FakeOperations("google-api-core")
    hs_fakes = {t: FakeOperations(upstream_name(t)) for t in targets}
    api = ApiCoreSide(api_fake)
    receiver = Receiver()
    hs = Hookshim(a.hookshim, hs_fakes)
    reg_errors: list[str] = []
    started = time.monotonic()
    busy0, total0 = machine_busy()
    py0 = os.times()
    hs_cpu0 = hs.cpu_seconds()
    print(f"# live run: {a.warmup} warm-up + {a.jobs} measured jobs; sides: google-api-core, "
          + ", ".join(f"hookshim {upstream_name(t)}" for t in targets), flush=True)

    def start_job(job: Job) -> None:
        api.start(job)
        for t, fake in hs_fakes.items():
            fake.create(job)
            try:
                hs.register(upstream_name(t), f"operations/{job.name}", f"{receiver.url}/{upstream_name(t)}")
            except Exception as e:  # noqa: BLE001
                reg_errors.append(f"{t}/{job.name}: {e!r}")

    def run_phase(phase: list[Job]) -> None:
        t0 = time.monotonic()
        for job in phase:
            delay = t0 + job.offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            threading.Thread(target=start_job, args=(job,), daemon=True).start()

    def wait_all(phase: list[Job], bound: float) -> bool:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            with api.lock:
                done_api = sum(1 for j in phase if j.name in api.detected) + len(api.errors)
            with receiver.lock:
                done_hs = [sum(1 for j in phase if (upstream_name(t), j.name) in receiver.first) for t in targets]
            if done_api >= len(phase) and all(d >= len(phase) for d in done_hs):
                return True
            time.sleep(0.5)
        return False

    warm = [j for j in jobs if j.warmup]
    measured = [j for j in jobs if not j.warmup]
    try:
        run_phase(warm)
        ok = wait_all(warm, 120.0)
        warm_end = time.monotonic() - started
        ups = hs.upstreams().get("upstreams", {})
        print(f"warm-up done at {warm_end:.0f} s (all detected: {ok}); learned priors:", flush=True)
        for t in targets:
            u = ups.get(upstream_name(t), {})
            print(f"  {upstream_name(t)}: {json.dumps(u.get('priors'))}", flush=True)
        run_phase(measured)
        ok2 = wait_all(measured, 180.0)
        wall = time.monotonic() - started
        busy1, total1 = machine_busy()
        py1 = os.times()
        hs_cpu = hs.cpu_seconds() - hs_cpu0
        ups_end = hs.upstreams().get("upstreams", {})
    finally:
        hs_logs = hs.logs()
        hs.stop()
        receiver.stop()
        api_fake.stop()
        for f in hs_fakes.values():
            f.stop()

    sides = [summarise("google-api-core", measured, api_fake, api.detected)]
    for t in targets:
        det = {name: ts for (u, name), ts in receiver.first.items() if u == upstream_name(t)}
        label = "hookshim, learned" if t == "none" else f"hookshim, target {t} s, learned"
        sides.append(summarise(label, measured, hs_fakes[t], det))
    py_cpu = (py1.user + py1.system) - (py0.user + py0.system)
    cpu = {
        "wall_s": wall,
        "machine_busy_share": (busy1 - busy0) / max(1, total1 - total0),
        "harness_cpu_s": py_cpu,
        "hookshim_cpu_s": hs_cpu,
        "loadavg_end": os.getloadavg(),
    }
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": vars(a),
        "all_measured_detected": ok2,
        "sides": sides,
        "cpu": cpu,
        "callbacks": {"total": receiver.count, "duplicates": receiver.duplicates, "bad_signature": receiver.bad},
        "api_core_errors": api.errors[:10],
        "registration_errors": reg_errors[:10],
        "priors_after_warmup": {upstream_name(t): ups.get(upstream_name(t), {}).get("priors") for t in targets},
        "priors_end": {upstream_name(t): ups_end.get(upstream_name(t), {}).get("priors") for t in targets},
        "requests_saved_end": {upstream_name(t): ups_end.get(upstream_name(t), {}).get("requests_saved")
                               for t in targets},
    }

    g = sides[0]
    print(f"\n#### live: {a.jobs} measured jobs after {a.warmup} warm-up, seed {a.seed}, {result['date']}\n")
    print("| side | requests/op | delay p50 / p99 s | with progress: req mean / median, delay p50 / p99 s "
          "| blind: req mean, delay p50 / p99 s | detected | peak req/s |")
    print("|---|---|---|---|---|---|---|")
    for s in sides:
        al, pr, bl = s["all"], s["progress"], s["blind"]
        print(f"| {s['side']} | {al['requests_mean']:.2f} | {al['delay_p50_s']:.1f} / {al['delay_p99_s']:.1f} "
              f"| {pr['requests_mean']:.2f} / {pr['requests_median']:g}, {pr['delay_p50_s']:.1f} / {pr['delay_p99_s']:.1f} "
              f"| {bl['requests_mean']:.2f}, {bl['delay_p50_s']:.1f} / {bl['delay_p99_s']:.1f} "
              f"| {al['detected']}/{al['jobs']} | {s['peak_requests_per_s']} |")
    print("\nAgainst google-api-core (requests mean ratio, p99 delay difference):\n")
    print("| side | all: req ratio, p99 Δ s | with progress | blind |")
    print("|---|---|---|---|")
    for s in sides[1:]:
        cells = []
        for k in ("all", "progress", "blind"):
            cells.append(f"{s[k]['requests_mean'] / g[k]['requests_mean']:.2f}×, "
                         f"{s[k]['delay_p99_s'] - g[k]['delay_p99_s']:+.1f}")
        print(f"| {s['side']} | " + " | ".join(cells) + " |")
    print(f"\nwall {wall:.0f} s; machine busy {100 * cpu['machine_busy_share']:.0f} % of 2 cores; "
          f"harness (Python: fakes, api-core threads, receiver) {py_cpu:.1f} s CPU "
          f"({100 * py_cpu / wall:.1f} % of one core); hookshim {hs_cpu:.1f} s CPU ({100 * hs_cpu / wall:.1f} %); "
          f"load average at the end {cpu['loadavg_end'][0]:.2f}")
    print(f"callbacks {receiver.count} (duplicates {receiver.duplicates}, bad signature {receiver.bad}); "
          f"api-core errors {len(api.errors)}; registration errors {len(reg_errors)}")
    if api.errors or reg_errors or not ok2:
        print("PROBLEMS:", api.errors[:3], reg_errors[:3], "all detected:", ok2)
        print(hs_logs[-2000:])
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nJSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
