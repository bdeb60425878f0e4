"""A noisy tenant beside a quiet one: what tenant B's requests cost while tenant A floods the
API with PDF exports and submissions, without tenant limits and with them.

One real ``htrq api`` process (``HTRQ_AUTH=required``, each tenant with its own key) on a
scratch database and Redis db; no worker (A's export job is made finished through the job
service, as a worker would leave it; submitted jobs stay queued). For ``--seconds``:

- tenant A: ``--flood`` threads, each looping a PDF export of a ``--pages``-page PDF job and,
  every fourth request, a submit of that PDF (inspected at submit, a render-process call);
- tenant B: one thread polling its job every 0.2 s, and one submitting a page image every
  2 s.

Printed side by side for the two runs, ``off`` (``HTRQ_TENANT_RATE=0``,
``HTRQ_TENANT_HEAVY=0``) and ``on`` (the defaults, or ``--rate`` / ``--heavy``): B's poll and
submit latency p50 and p99, and A's answers by status (429 counted apart).

    .venv/bin/python bench/noisy_tenant.py --seconds 60
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
from scratch import scratch_database, settings_env, start_service

from htrq.db import make_engine, make_sessions
from htrq.settings import Settings
from htrq.tenants import create_key
from migrations import upgrade
from tests.finished import Read, finish
from tests.images import page_png
from tests.pdfs import text_pdf
from tests.services import free_port


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run(args: argparse.Namespace, limits: dict[str, object], label: str) -> dict[str, object]:
    with (
        scratch_database(args.admin_url, args.broker_url) as db_url,
        tempfile.TemporaryDirectory(prefix="htrq-noisy-") as tmp,
    ):
        upgrade(db_url)
        settings = Settings(
            database_url=db_url,
            broker_url=args.broker_url,
            storage_dir=Path(tmp) / "blobs",
            pdf_dpi=100,
            **limits,  # type: ignore[arg-type]
        )
        engine = make_engine(db_url)
        sessions = make_sessions(engine)
        key_a = create_key(sessions, tenant="noisy-a")[1]
        key_b = create_key(sessions, tenant="quiet-b")[1]
        port = free_port()
        log = Path(tmp) / "api.log"
        env = settings_env(settings)
        proc = start_service(["api", "--port", str(port), "--loglevel=warning"], env, log)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_up(url, proc, log)
            a = {"Authorization": f"Bearer {key_a}"}
            b = {"Authorization": f"Bearer {key_b}"}
            pdf = text_pdf([(595, 842)] * args.pages)
            job_a = _post(url, a, "letters.pdf", pdf, "application/pdf").json()["id"]
            for i in range(args.pages):
                line = Read(f"line of page {i + 1}", 0.9, (30, 60, 700, 110))
                finish(sessions, uuid.UUID(job_a), i, [line], (826, 1169))
            job_b = _post(url, b, "b.png", page_png("tenant b"), "image/png").json()["id"]
            return _flood(args, url, a, b, job_a, job_b, pdf, label)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            engine.dispose()


def _wait_up(url: str, proc, log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the API exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the API did not start")


def _post(url: str, headers: dict[str, str], name: str, data: bytes, media: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/jobs", files=[("files", (name, data, media))], headers=headers, timeout=300
    )


def _flood(
    args: argparse.Namespace,
    url: str,
    a: dict[str, str],
    b: dict[str, str],
    job_a: str,
    job_b: str,
    pdf: bytes,
    label: str,
) -> dict[str, object]:
    stop = threading.Event()
    a_status: Counter[int] = Counter()
    polls: list[float] = []
    submits: list[float] = []
    b_status: Counter[int] = Counter()
    lock = threading.Lock()

    def flood(n: int) -> None:
        i = 0
        with httpx.Client(timeout=300) as client:
            while not stop.is_set():
                i += 1
                try:
                    if i % 4 == 0:
                        files = [("files", (f"{n}-{i}.pdf", pdf, "application/pdf"))]
                        r = client.post(f"{url}/v1/jobs", files=files, headers=a)
                    else:
                        r = client.get(f"{url}/v1/jobs/{job_a}/export?format=pdf", headers=a)
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    a_status[status] += 1
                if status == 429:
                    # A polite client honours Retry-After; a hostile one would not, and is
                    # refused as cheaply either way.
                    time.sleep(min(float(r.headers.get("Retry-After", 1)), 1.0))

    def poll() -> None:
        with httpx.Client(timeout=300) as client:
            while not stop.is_set():
                t = time.monotonic()
                r = client.get(f"{url}/v1/jobs/{job_b}", headers=b)
                polls.append(time.monotonic() - t)
                b_status[r.status_code] += 1
                time.sleep(0.2)

    def submit() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            t = time.monotonic()
            r = _post(url, b, f"b{k}.png", page_png(f"b page {k}"), "image/png")
            submits.append(time.monotonic() - t)
            b_status[r.status_code] += 1
            stop.wait(2)

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(args.flood)]
    threads += [threading.Thread(target=poll), threading.Thread(target=submit)]
    for t in threads:
        t.start()
    stop.wait(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    row = {
        "limits": label,
        "B polls": len(polls),
        "B poll p50 ms": 1000 * statistics.median(polls) if polls else float("nan"),
        "B poll p99 ms": 1000 * _percentile(polls, 0.99),
        "B submits": len(submits),
        "B submit p50 ms": 1000 * statistics.median(submits) if submits else float("nan"),
        "B submit p99 ms": 1000 * _percentile(submits, 0.99),
        "B refused": sum(n for s, n in b_status.items() if s >= 400),
        "A requests": sum(a_status.values()),
        "A 429": a_status.get(429, 0),
        "A 2xx": sum(n for s, n in a_status.items() if 200 <= s < 300),
        "A other": sum(n for s, n in a_status.items() if s != 429 and not 200 <= s < 300),
    }
    print(f"{label}: {row}", file=sys.stderr, flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--flood", type=int, default=16, help="tenant A's concurrent clients")
    p.add_argument("--pages", type=int, default=12, help="pages of A's PDF job")
    p.add_argument("--rate", type=float, default=None, help="HTRQ_TENANT_RATE of the 'on' run")
    p.add_argument("--heavy", type=int, default=None, help="HTRQ_TENANT_HEAVY of the 'on' run")
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    args = p.parse_args()
    on: dict[str, object] = {}
    if args.rate is not None:
        on["tenant_rate"] = args.rate
    if args.heavy is not None:
        on["tenant_heavy"] = args.heavy
    rows = [
        run(args, {"tenant_rate": 0, "tenant_heavy": 0}, "off"),
        run(args, on, "on"),
    ]
    names = list(rows[0])
    print("| " + " | ".join(names) + " |")
    print("|" + "---|" * len(names))
    for row in rows:
        cells = [f"{v:.0f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
