#!/usr/bin/env python3
"""Database work per operation on the PostgreSQL store (docs/benchmarks.md, section 8).

    python3 scripts/pg-work-per-op.py [N=500] [REPLICAS=1] [postgres|sled]

Starts REPLICAS `hookshim serve` processes (target/debug/hookshim, or $HOOKSHIM_BIN) on a
database of their own (created and dropped on the server at 127.0.0.1:5432, user postgres),
registers N operations over HTTP (16 at a time, spread round robin), each finished at its first
poll by a loopback fake upstream and called back to a loopback receiver, and prints the commits
and rows written per operation (pg_stat_database, the idle traffic measured first and
subtracted), the registration rate and the hookshim CPU time per operation (/proc).
"""
import http.server, json, os, subprocess, sys, tempfile, threading, time, urllib.request, socketserver

WORK = tempfile.mkdtemp(prefix="pg-work-")

N = int(sys.argv[1]) if len(sys.argv) > 1 else 500
R = int(sys.argv[2]) if len(sys.argv) > 2 else 1
BACKEND = sys.argv[3] if len(sys.argv) > 3 else "postgres"
BIN = os.environ.get("HOOKSHIM_BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "debug", "hookshim"))
DB = "hookshim_bench"
calls = set()
lock = threading.Lock()

class Up(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps({"state": "done", "output": {"ok": True}}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("content-length", 0)); data = json.loads(self.rfile.read(n))
        with lock: calls.add(data["data"]["id"])
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()

class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
srv = S(("127.0.0.1", 0), Up); threading.Thread(target=srv.serve_forever, daemon=True).start()
port = srv.server_address[1]

def psql(sql, db="test"):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", db, "-Atc", sql], capture_output=True, text=True).stdout.strip()

psql(f"DROP DATABASE IF EXISTS {DB}"); psql(f"CREATE DATABASE {DB}")
cfg = f"""
[server]
listen = "127.0.0.1:PORT"
[store]
backend = "BACKEND"
schema = "bench"
path = "{WORK}/dataPORT"
[callbacks]
default_url = "http://127.0.0.1:{port}/callback"
[upstreams.jobs]
base_url = "http://127.0.0.1:{port}/"
status_path = "jobs/{{operation}}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
rate = {{ per_second = 100000, burst = 1000 }}
poll = {{ initial = "50ms", max = "1s", deadline = "1h" }}
"""
import shutil
procs = []
env = dict(os.environ, HOOKSHIM_DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB}", HOOKSHIM_CALLBACK_SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", HOOKSHIM_LOG="warn")
for r in range(R):
    port_r = 28690 + r
    shutil.rmtree(f"{WORK}/data{port_r}", ignore_errors=True)
    open(f"{WORK}/shim{r}.toml", "w").write(cfg.replace("PORT", str(port_r)).replace("BACKEND", BACKEND))
    procs.append(subprocess.Popen([BIN, "--config", f"{WORK}/shim{r}.toml", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=open(f"{WORK}/err{r}.log", "w")))
    for _ in range(100):
        try: urllib.request.urlopen(f"http://127.0.0.1:{port_r}/healthz"); break
        except Exception: time.sleep(0.1)
time.sleep(5)
import resource
def cpu():
    t = 0.0
    for pr in procs:
        with open(f"/proc/{pr.pid}/stat") as f: parts = f.read().split(")")[1].split()
        t += (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    return t
def stats():
    if BACKEND != "postgres": return [0, 0, 0, 0, 0]
    r = psql(f"SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_returned + tup_fetched FROM pg_stat_database WHERE datname = '{DB}'")
    return [int(x) for x in r.split("|")]
psql("SELECT pg_stat_force_next_flush()", DB)
# The idle rate first (statistics reach pg_stat_database up to a second late: wait them out).
time.sleep(2); i0 = stats(); time.sleep(10); i1 = stats()
idle = [(b - a) / 10.0 for a, b in zip(i0, i1)]
s0 = stats(); c0 = cpu(); t0 = time.time()
ids = []
from concurrent.futures import ThreadPoolExecutor
def reg(i):
    req = urllib.request.Request(f"http://127.0.0.1:{28690 + i % R}/v1/operations", data=json.dumps({"upstream": "jobs", "operation": f"b{i}"}).encode(), headers={"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())["id"]
with ThreadPoolExecutor(16) as ex: ids = list(ex.map(reg, range(N)))
t_reg = time.time() - t0
while len(calls) < N and time.time() - t0 < 120: time.sleep(0.05)
t_all = time.time() - t0
c1 = cpu()
time.sleep(3)  # late statistics; the idle traffic meanwhile is subtracted below
s1 = stats()
busy_secs = t_all + 3
work = [(b - a) - i * busy_secs for a, b, i in zip(s0, s1, idle)]
for pr in procs: pr.terminate(); pr.wait()
print(f"backend={BACKEND} replicas={R} hookshim CPU per operation {(c1 - c0) / N * 1000:.2f} ms")
print(f"N={N} registered in {t_reg:.2f}s ({N/t_reg:.0f}/s), all called back after {t_all:.2f}s, callbacks={len(calls)}")
print("idle per second: commits %.1f, ins %.1f, upd %.1f, del %.1f" % tuple(idle[:4]))
print("per operation (idle subtracted): commits %.2f, rows inserted %.2f, updated %.2f, deleted %.2f (rows written %.2f)" % (work[0]/N, work[1]/N, work[2]/N, work[3]/N, (work[1]+work[2]+work[3])/N))
psql(f"DROP DATABASE IF EXISTS {DB}")
