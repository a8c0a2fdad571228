"""Loopback fakes of three batch APIs, shaped from the pinned SDKs' own types so that the
unmodified SDKs parse every answer (versions in tests/sdk/requirements.txt).

Endpoints (one server, one port):

OpenAI Batches (openai 3.57.0)
  POST /v1/files                      multipart upload; answers a FileObject
                                      (openai/types/file_object.py). The SDK needs it: a batch is
                                      created from an uploaded JSONL file (`input_file_id`).
  POST /v1/batches                    answers a Batch (openai/types/batch.py), status "validating"
  GET  /v1/batches/{id}               a Batch: "in_progress" (request_counts move) until the job
                                      ends, then "completed" with output_file_id

Gemini batches (google-genai 3.6.1; 3.x talks to /v1/ by default, GOOGLE_AI_API_DEFAULT_VERSION
in google/genai/_api_client.py; /v1beta/ is answered the same, as hookshim's preset uses it)
  POST /{v1,v1beta}/models/{m}:batchGenerateContent
                                      answers the long-running Operation the Gemini API returns:
                                      {"name": "batches/<id>", "metadata": {... "state":
                                      "BATCH_STATE_PENDING"}} (read by _BatchJob_from_mldev in
                                      google/genai/batches.py into types.BatchJob)
  GET  /{v1,v1beta}/batches/{id}      the same Operation: BATCH_STATE_RUNNING with batchStats, then
                                      BATCH_STATE_SUCCEEDED, done=true, output.inlinedResponses

Anthropic Message Batches (anthropic 2.14.0)
  POST /v1/messages/batches           answers a MessageBatch
                                      (anthropic/types/messages/message_batch.py), "in_progress"
  GET  /v1/messages/batches/{id}      "in_progress" until the job ends, then "ended" with
                                      request_counts.succeeded and results_url

Other
  GET  /v1/models                     OpenAI's model list (openai/types/model.py), a request no
                                      proxy recognises: used to measure pass-through

Control (not part of any provider):
  GET  /_counts                       {"jobs": {id: {"provider", "creates", "status_reads",
                                      "unauthorized"}}, "requests": n}; `id` is the id the SDK
                                      sees (OpenAI/Anthropic `id`, Gemini `batches/<id>`)

Every provider endpoint checks its credential header (OpenAI `Authorization: Bearer`, Gemini
`x-goog-api-key`, Anthropic `x-api-key` or `Authorization: Bearer`) against the key it was started with and answers 401 in
the provider's error shape otherwise, so a proxy that drops credentials is caught.

A job ends `job_seconds` after its create. Run standalone for manual tries:
    python tests/sdk/fake_providers.py --port 7070 --job-seconds 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OPENAI_KEY = "sk-test-openai"
GEMINI_KEY = "test-gemini-key"
ANTHROPIC_KEY = "sk-ant-test"

VERSION = r"/v1(?:beta|alpha)?\d*"
R_OPENAI_FILES = re.compile(r"^/v1/files$")
R_OPENAI_CREATE = re.compile(r"^/v1/batches$")
R_OPENAI_GET = re.compile(r"^/v1/batches/([A-Za-z0-9_-]+)$")
R_GEMINI_CREATE = re.compile(r"^" + VERSION + r"/models/([^/:]+):batchGenerateContent$")
R_GEMINI_GET = re.compile(r"^" + VERSION + r"/batches/([A-Za-z0-9_-]+)$")
R_ANTHROPIC_CREATE = re.compile(r"^/v1/messages/batches$")
R_ANTHROPIC_GET = re.compile(r"^/v1/messages/batches/([A-Za-z0-9_-]+)$")


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")


class Job:
    def __init__(self, provider: str, sdk_id: str, job_seconds: float, total: int, model: str = ""):
        self.provider = provider
        self.sdk_id = sdk_id
        self.created = time.time()
        self.job_seconds = job_seconds
        self.total = total
        self.model = model
        self.status_reads = 0
        self.creates = 1

    def fraction(self) -> float:
        if self.job_seconds <= 0:
            return 1.0
        return min(1.0, (time.time() - self.created) / self.job_seconds)

    def done(self) -> bool:
        return self.fraction() >= 1.0


class FakeProviders:
    """The fake, on its own thread: `start()`, then `url`, `counts()`, `stop()`."""

    def __init__(self, port: int = 0, job_seconds: float = 3.0, latency_ms: float = 0.0):
        self.job_seconds = job_seconds
        self.latency = latency_ms / 1000.0
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.requests = 0
        self.unauthorized = 0
        fake = self

        class Handler(Handler_):
            owner = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FakeProviders":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def counts(self) -> dict:
        with self.lock:
            return {
                "jobs": {
                    k: {
                        "provider": j.provider,
                        "creates": j.creates,
                        "status_reads": j.status_reads,
                    }
                    for k, j in self.jobs.items()
                },
                "requests": self.requests,
                "unauthorized": self.unauthorized,
            }

    # -- bodies, each shaped from the SDK type named in the module doc --------------------------

    @staticmethod
    def openai_file(file_id: str, filename: str, size: int) -> dict:
        # openai/types/file_object.py: FileObject
        return {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": "batch",
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    @staticmethod
    def openai_batch(job: Job, endpoint: str, input_file_id: str, metadata, first: bool) -> dict:
        # openai/types/batch.py: Batch (+ batch_request_counts.py: BatchRequestCounts)
        created = int(job.created)
        done = job.done()
        completed = job.total if done else int(job.total * job.fraction())
        status = "validating" if first else ("completed" if done else "in_progress")
        return {
            "id": job.sdk_id,
            "object": "batch",
            "endpoint": endpoint,
            "model": job.model or None,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": f"file-out-{job.sdk_id}" if done and not first else None,
            "error_file_id": None,
            "created_at": created,
            "in_progress_at": None if first else created + 1,
            "expires_at": created + 86400,
            "finalizing_at": int(job.created + job.job_seconds) if done and not first else None,
            "completed_at": int(job.created + job.job_seconds) if done and not first else None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {
                "total": job.total,
                "completed": 0 if first else completed,
                "failed": 0,
            },
            "usage": None,
            "metadata": metadata,
        }

    @staticmethod
    def gemini_operation(job: Job, display_name: str, first: bool) -> dict:
        # The Operation of a Gemini batch; google-genai reads name and metadata.* in
        # _BatchJob_from_mldev (google/genai/batches.py) into types.BatchJob, and maps
        # BATCH_STATE_* to JobState in t_job_state (google/genai/_transformers.py).
        done = job.done() and not first
        ok = job.total if done else int(job.total * job.fraction())
        state = (
            "BATCH_STATE_PENDING"
            if first
            else ("BATCH_STATE_SUCCEEDED" if done else "BATCH_STATE_RUNNING")
        )
        meta = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": job.model,
            "displayName": display_name,
            "state": state,
            "createTime": _rfc3339(job.created),
            "updateTime": _rfc3339(time.time()),
            "batchStats": {
                "requestCount": str(job.total),
                "successfulRequestCount": str(0 if first else ok),
                "pendingRequestCount": str(job.total - (0 if first else ok)),
            },
            "name": job.sdk_id,
        }
        body = {"name": job.sdk_id, "metadata": meta}
        if done:
            meta["endTime"] = _rfc3339(job.created + job.job_seconds)
            meta["output"] = {
                "inlinedResponses": {
                    "inlinedResponses": [
                        {
                            "response": {
                                "candidates": [
                                    {
                                        "content": {"parts": [{"text": f"answer {i}"}], "role": "model"},
                                        "finishReason": "STOP",
                                    }
                                ],
                                "modelVersion": job.model.removeprefix("models/"),
                            }
                        }
                        for i in range(job.total)
                    ]
                }
            }
            body["done"] = True
            body["response"] = {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",
                "inlinedResponses": meta["output"]["inlinedResponses"],
            }
        return body

    @staticmethod
    def anthropic_batch(job: Job, first: bool) -> dict:
        # anthropic/types/messages/message_batch.py: MessageBatch
        # (+ message_batch_request_counts.py: MessageBatchRequestCounts)
        done = job.done() and not first
        ok = job.total if done else int(job.total * job.fraction())
        return {
            "id": job.sdk_id,
            "type": "message_batch",
            "processing_status": "ended" if done else "in_progress",
            "request_counts": {
                "processing": job.total - (0 if first else ok) if not done else 0,
                "succeeded": ok if done else 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": _rfc3339(job.created),
            "expires_at": _rfc3339(job.created + 86400),
            "ended_at": _rfc3339(job.created + job.job_seconds) if done else None,
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": f"https://api.anthropic.com/v1/messages/batches/{job.sdk_id}/results"
            if done
            else None,
        }


class Handler_(BaseHTTPRequestHandler):
    owner: FakeProviders
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------------

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: dict, extra: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _unauthorized(self, provider: str) -> None:
        with self.owner.lock:
            self.owner.unauthorized += 1
        if provider == "openai":
            body = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                              "param": None, "code": "invalid_api_key"}}
        elif provider == "gemini":
            body = {"error": {"code": 401, "message": "API key not valid.", "status": "UNAUTHENTICATED"}}
        else:
            body = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
        self._send(401, body)

    def _authorized(self, provider: str) -> bool:
        if provider == "openai":
            ok = self.headers.get("Authorization") == f"Bearer {OPENAI_KEY}"
        elif provider == "gemini":
            ok = self.headers.get("x-goog-api-key") == GEMINI_KEY
        else:
            # anthropic 2.14.0 sends its api_key as `Authorization: Bearer` (anthropic/_client.py,
            # _api_key_auth) and `anthropic-version: 2026-10-21`; hookshim's preset sends
            # `x-api-key` and `anthropic-version: 2023-06-01`. The API takes both.
            ok = (self.headers.get("x-api-key") == ANTHROPIC_KEY
                  or self.headers.get("Authorization") == f"Bearer {ANTHROPIC_KEY}")
        if not ok:
            self._unauthorized(provider)
        return ok

    def _not_found(self) -> None:
        self._send(404, {"error": {"message": f"no route {self.command} {self.path}", "code": 404}})

    def _count(self) -> None:
        with self.owner.lock:
            self.owner.requests += 1
        if self.owner.latency:
            time.sleep(self.owner.latency)

    def _read_job(self, key: str, provider: str) -> Job | None:
        with self.owner.lock:
            job = self.owner.jobs.get(key)
            if job is not None and job.provider == provider:
                job.status_reads += 1
                return job
        return None

    def _is_gemini(self, raw_id: str) -> bool:
        with self.owner.lock:
            job = self.owner.jobs.get(f"batches/{raw_id}")
            if job is not None:
                return True
            if raw_id in self.owner.jobs:
                return False
        return "x-goog-api-key" in self.headers

    def _new_job(self, provider: str, sdk_id: str, total: int, model: str = "") -> Job:
        job = Job(provider, sdk_id, self.owner.job_seconds, total, model)
        with self.owner.lock:
            self.owner.jobs[sdk_id] = job
        return job

    # -- routes -----------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/_counts":
            self._send(200, self.owner.counts())
            return
        self._count()
        if path == "/v1/models":
            # A plain list (openai/types/model.py: Model), for pass-through measurements.
            if not self._authorized("openai"):
                return
            self._send(200, {"object": "list", "data": [
                {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"}]})
            return
        # OpenAI and google-genai 3.x read a batch at the same path, /v1/batches/{id}: the job's
        # id decides (then the credential header, for an unknown id).
        m = R_GEMINI_GET.match(path)
        if m and not self._is_gemini(m.group(1)):
            m = None
        if m:
            if not self._authorized("gemini"):
                return
            job = self._read_job(f"batches/{m.group(1)}", "gemini")
            if job is None:
                self._send(404, {"error": {"code": 404, "message": "Requested entity was not found.",
                                           "status": "NOT_FOUND"}})
                return
            self._send(200, FakeProviders.gemini_operation(job, "sdk-proof", first=False))
        elif m := R_OPENAI_GET.match(path):
            if not self._authorized("openai"):
                return
            job = self._read_job(m.group(1), "openai")
            if job is None:
                self._send(404, {"error": {"message": "No batch found", "type": "invalid_request_error",
                                           "param": None, "code": None}})
                return
            body = FakeProviders.openai_batch(job, "/v1/chat/completions", "file-in", None, first=False)
            self._send(200, body)
        elif m := R_ANTHROPIC_GET.match(path):
            if not self._authorized("anthropic"):
                return
            job = self._read_job(m.group(1), "anthropic")
            if job is None:
                self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": "not found"}})
                return
            self._send(200, FakeProviders.anthropic_batch(job, first=False))
        else:
            self._not_found()

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        raw = self._body()
        self._count()
        if R_OPENAI_FILES.match(path):
            if not self._authorized("openai"):
                return
            ctype = self.headers.get("Content-Type", "")
            if not ctype.startswith("multipart/form-data") or b'name="purpose"' not in raw:
                self._send(400, {"error": {"message": "expected a multipart upload with purpose",
                                           "type": "invalid_request_error", "param": None, "code": None}})
                return
            m = re.search(rb'filename="([^"]*)"', raw)
            name = m.group(1).decode() if m else "upload.jsonl"
            self._send(200, FakeProviders.openai_file(f"file-{uuid.uuid4().hex[:24]}", name, len(raw)))
        elif R_OPENAI_CREATE.match(path):
            if not self._authorized("openai"):
                return
            req = json.loads(raw or b"{}")
            if not str(req.get("input_file_id", "")).startswith("file-"):
                self._send(400, {"error": {"message": "input_file_id: upload a file first",
                                           "type": "invalid_request_error", "param": "input_file_id",
                                           "code": None}})
                return
            job = self._new_job("openai", f"batch_{uuid.uuid4().hex[:24]}", total=4)
            body = FakeProviders.openai_batch(job, req.get("endpoint", "/v1/chat/completions"),
                                              req["input_file_id"], req.get("metadata"), first=True)
            self._send(200, body)
        elif m := R_GEMINI_CREATE.match(path):
            if not self._authorized("gemini"):
                return
            req = json.loads(raw or b"{}")
            batch = req.get("batch", {})
            reqs = batch.get("inputConfig", {}).get("requests", {}).get("requests", [])
            job = self._new_job("gemini", f"batches/{uuid.uuid4().hex[:20]}", total=max(1, len(reqs)),
                                model=f"models/{m.group(1)}")
            self._send(200, FakeProviders.gemini_operation(job, batch.get("displayName", ""), first=True))
        elif R_ANTHROPIC_CREATE.match(path):
            if not self._authorized("anthropic"):
                return
            req = json.loads(raw or b"{}")
            n = len(req.get("requests", [])) or 1
            job = self._new_job("anthropic", f"msgbatch_{uuid.uuid4().hex[:24]}", total=n)
            self._send(200, FakeProviders.anthropic_batch(job, first=True))
        else:
            self._not_found()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=7070)
    ap.add_argument("--job-seconds", type=float, default=3.0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    a = ap.parse_args()
    fake = FakeProviders(a.port, a.job_seconds, a.latency_ms)
    print(f"fake providers on {fake.url} (jobs end after {a.job_seconds}s)", flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
