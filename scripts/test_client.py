"""The prototype's test client, an HTTP client of the gateway again: POST the
texts of scripts/test_data.json to /evaluate, follow /stream/{job_id} (Server-
Sent Events) until "complete", print each grade as it arrives.

Same libraries as the prototype's (requests + sseclient-py); a dropped stream
is resumed with Last-Event-ID, so nothing is missed or shown twice.

    .venv/bin/texteval gateway &                                    # or: make run
    .venv/bin/python scripts/test_client.py                         # the sample texts
    .venv/bin/python scripts/test_client.py my_texts.json --out results.csv
    .venv/bin/python scripts/test_client.py --base-url http://gateway:8080 --api-key "$KEY"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests
import sseclient

DEFAULT_FILE = Path(__file__).resolve().parent / "test_data.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE, help='JSON: {"items": [...]}')
    parser.add_argument("--base-url", default=os.environ.get("GATEWAY_URL", "http://localhost:8080"))
    parser.add_argument("--api-key", default=os.environ.get("GATEWAY_API_KEY"), help="else GATEWAY_API_KEY")
    parser.add_argument("--out", default=None, help="write the results (.csv or .jsonl) when complete")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up following after this long")
    return parser


def follow(session: requests.Session, url: str, deadline: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The job's results and its terminal event; reconnects from the last id seen."""
    results: list[dict[str, Any]] = []
    last_id: str | None = None
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with session.get(url, stream=True, headers=headers, timeout=(10, 60)) as response:
                response.raise_for_status()
                for event in sseclient.SSEClient(response).events():  # type: ignore[no-untyped-call]
                    payload = json.loads(event.data)
                    last_id = event.id or last_id
                    if "error" in payload:
                        raise SystemExit(f"stream: {payload['error']}")
                    kind, data = payload["event"], payload["data"]
                    if kind == "accepted":
                        print(f"accepted: {data['total_items']} texts, ~{data['estimated_time_seconds']} s")
                    elif kind == "batch_complete":
                        results.extend(data["results"])
                        for r in data["results"]:
                            grade = r["nota"] if r["status"] == "ok" else "error"
                            print(f"  {r['id_alumno']}: {grade} — {(r['feedback'] or '')[:80]}")
                        p = data["progress"]
                        print(f"  [{p['completed']}/{p['total']}] {p['percentage']} %")
                    elif kind in ("complete", "cancelled"):
                        return results, payload
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            print(f"stream dropped ({type(exc).__name__}); resuming after event {last_id}", file=sys.stderr)
            time.sleep(1.0)
    raise SystemExit(f"no terminal event within the timeout ({len(results)} results so far)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    body = json.loads(args.file.read_text(encoding="utf-8"))
    base = args.base_url.rstrip("/")
    session = requests.Session()
    if args.api_key:
        session.headers["Authorization"] = f"Bearer {args.api_key}"
    answer = session.post(f"{base}/evaluate", json=body, timeout=60)
    if answer.status_code != 200:
        print(f"POST /evaluate: {answer.status_code} {answer.text}", file=sys.stderr)
        return 1
    job = answer.json()
    print(f"job {job['job_id']}: {job['total_items']} texts, status {job['status']}")
    started = time.monotonic()
    results, terminal = follow(session, base + job["stream_url"], started + args.timeout_s)
    data = terminal["data"]
    print(f"{terminal['event']}: {len(results)} results in {time.monotonic() - started:.1f} s ({data})")
    if args.out:
        fmt = "jsonl" if args.out.endswith(".jsonl") else "csv"
        download = session.get(f"{base}/jobs/{job['job_id']}/results", params={"format": fmt}, timeout=60)
        download.raise_for_status()
        # Owner-only: the rows are minors' grades.
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(download.content)
        print(f"results written to {args.out}")
    return 0 if terminal["event"] == "complete" and len(results) == job["total_items"] else 1


if __name__ == "__main__":
    sys.exit(main())
