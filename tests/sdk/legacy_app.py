"""A legacy app as docs/migration.md walks it through hookshim: it creates one batch job with the
provider's own SDK and polls it with the SDK until it is done. Nothing in it knows hookshim: the
SDKs take their base URL and key from their own environment variables
(OPENAI_BASE_URL / OPENAI_API_KEY, GOOGLE_GEMINI_BASE_URL / GEMINI_API_KEY).

    python tests/sdk/legacy_app.py openai|gemini [--every 1.0]

Headers for hookshim may be added to the create (step 2 of the guide) with
`--header Hookshim-Callback-Url=http://127.0.0.1:9000/callback`; the app prints the job id, each
status it reads (with `Hookshim-Cache` when the answer came from hookshim) and the final state.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sdk", choices=("openai", "gemini"))
    ap.add_argument("--every", type=float, default=1.0, help="seconds between status reads")
    ap.add_argument("--header", action="append", default=[], help="NAME=VALUE added to the create request")
    a = ap.parse_args()
    extra = dict(h.split("=", 1) for h in a.header)
    seen: dict[str, str] = {}

    def hook(response) -> None:  # the SDK's HTTP client reports each response's headers here
        seen["cache"] = response.headers.get("hookshim-cache", "")
        if response.headers.get("hookshim-operation-id"):
            seen["op"] = response.headers["hookshim-operation-id"]

    if a.sdk == "openai":
        import openai

        client = openai.OpenAI(http_client=openai.DefaultHttpxClient(event_hooks={"response": [hook]}))
        f = client.files.create(file=("batch.jsonl", b'{"custom_id": "r1", "method": "POST", '
                                      b'"url": "/v1/chat/completions", "body": {}}\n'), purpose="batch")
        job = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                    completion_window="24h", extra_headers=extra)
        job_id, read = job.id, (lambda: client.batches.retrieve(job.id))
        status, done = (lambda b: b.status), {"completed", "failed", "expired", "cancelled"}
    else:
        from google import genai
        from google.genai import types

        client = genai.Client(http_options=types.HttpOptions(client_args={"event_hooks": {"response": [hook]}}))
        job = client.batches.create(
            model="gemini-2.5-flash",
            src=[{"contents": [{"parts": [{"text": "hello"}], "role": "user"}]}],
            config=types.CreateBatchJobConfig(http_options=types.HttpOptions(headers=extra) if extra else None),
        )
        job_id, read = job.name, (lambda: client.batches.get(name=job.name))
        status = lambda b: b.state.value  # noqa: E731
        done = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}

    print(f"created {job_id}" + (f" (Hookshim-Operation-Id: {seen['op']})" if seen.get("op") else ""), flush=True)
    while True:
        b = read()
        cache = f"  Hookshim-Cache: {seen['cache']}" if seen.get("cache") else ""
        print(f"{job_id}: {status(b)}{cache}", flush=True)
        if status(b) in done:
            return 0
        time.sleep(a.every)


if __name__ == "__main__":
    sys.exit(main())
