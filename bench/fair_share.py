"""Fair share: how long tenant B's one page waits, alone and behind tenant A's backlog.

A real ``htrq worker`` (Celery with celery-batches on Redis, results in PostgreSQL) reads
one-line pages submitted through the job service. First B sends one page at a time into an
idle service (``--idle-rounds``); then A sends ``--backlog`` one-line pages as one job and,
once the worker is busy with them, B sends one page. B's wait is from the submit call to its
page's ``finished_at``. The bench prints both waits, their ratio, B's wait in worker groups
(the median group's time, from the worker's log) and how many of A's pages finished first.
With ``--compare`` it runs the backlog again with fair share off (``HTRQ_FAIR_SHARE=false``,
one queue per model, first come first served) for the figure fair share avoids.

    .venv/bin/python bench/fair_share.py                          # built-in model, 2,000 pages
    .venv/bin/python bench/fair_share.py --model tiny --compare    # tiny random model, both modes

Needs PostgreSQL and Redis (``--admin-url`` / ``--broker-url``); it creates and drops its own
database and flushes the Redis database it is given (default db 14).
"""

from __future__ import annotations

import argparse
import io
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import redis
from PIL import Image, ImageDraw
from scratch import WorkerBench, scratch_service, worker_arguments
from sqlalchemy import func, select

from htrq.db import session_scope
from htrq.jobs.deletion import delete_job
from htrq.models import Page
from htrq.settings import Settings
from htrq.tenants import ensure_tenant


def make_pages(n: int, synthetic: bool) -> list[bytes]:
    """N distinct one-line pages: synthetic handwriting (as bench/service_throughput.py), or
    plain rendered text, which is much cheaper to make on a busy machine."""
    if synthetic:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from service_throughput import make_pages as synthetic_pages  # not a package

        return list(synthetic_pages(n))
    out = []
    for i in range(n):
        im = Image.new("L", (360, 48), 255)
        ImageDraw.Draw(im).text((6, 16), f"line {i} of the letter, {i % 97} words", fill=0)
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


class Service(WorkerBench):
    """A real worker process, and submits through the job service for two tenants."""

    def __init__(self, settings: Settings, log: Path) -> None:
        super().__init__(settings, log)
        with session_scope(self.sessions) as s:
            run = uuid.uuid4().hex[:6]
            self.a, self.b = (ensure_tenant(s, f"{n}-{run}").id for n in ("A", "B"))

    def finished(self, job_id: uuid.UUID) -> tuple[int, datetime | None]:
        with self.sessions() as s:
            done, last = s.execute(
                select(func.count(), func.max(Page.finished_at)).where(
                    Page.job_id == job_id, Page.finished_at.is_not(None)
                )
            ).one()
        return int(done), last

    def wait(self, job_id: uuid.UUID, n: int, timeout: float, poll: float = 0.2) -> datetime:
        deadline = time.monotonic() + timeout
        while True:
            done, last = self.finished(job_id)
            if done >= n and last is not None:
                return last
            if self.worker.poll() is not None:
                raise SystemExit(f"the worker exited:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {done}/{n} pages of {job_id} finished")
            time.sleep(poll)

    def b_wait(self, page: bytes, timeout: float) -> tuple[float, datetime]:
        """Seconds from B's submit call to its page's ``finished_at``."""
        started = datetime.now(UTC)
        job = self.submit(self.b, [page])
        last = self.wait(job, 1, timeout, poll=0.05)
        return (last - started).total_seconds(), last

    def a_finished_by(self, job_id: uuid.UUID, moment: datetime) -> int:
        with self.sessions() as s:
            q = select(func.count()).where(Page.job_id == job_id, Page.finished_at <= moment)
            return int(s.scalar(q) or 0)

    def group_seconds(self) -> list[float]:
        """Pipeline seconds of each group the worker has read, from its log."""
        return [int(ms) / 1e3 for ms in re.findall(r"\(pipeline (\d+) ms", self.log.read_text())]


def run(settings: Settings, args: argparse.Namespace, pages: list[bytes], tag: str) -> dict:
    log = Path(tempfile.gettempdir()) / f"htrq-bench-fair-share-{tag}.log"
    service = Service(settings, log)
    try:
        # Warm-up: the worker has started, loaded the model and read a group of each tenant.
        service.wait(service.submit(service.a, pages[:4]), 4, args.timeout)
        service.wait(service.submit(service.b, pages[4:5]), 1, args.timeout)
        idle = [service.b_wait(pages[5 + i], args.timeout)[0] for i in range(args.idle_rounds)]
        backlog = service.submit(service.a, pages[: args.backlog])
        service.wait(backlog, 1, args.timeout, poll=0.05)  # the worker is busy with A's pages
        busy, b_done = service.b_wait(pages[-1], args.timeout)
        a_first = service.a_finished_by(backlog, b_done)
        groups = service.group_seconds()
        drained = None
        if args.drain or not settings.fair_share:
            drained = (service.wait(backlog, args.backlog, args.timeout) - b_done).total_seconds()
        # What is left of the backlog must not reach the next run's worker (its sweeper
        # would re-send the pages).
        delete_job(
            sessions=service.sessions, storage=service.storage, tenant_id=service.a, job_id=backlog
        )
    finally:
        service.close()
    return {
        "idle": statistics.median(idle),
        "idle_all": idle,
        "busy": busy,
        "a_first": a_first,
        "group": statistics.median(groups) if groups else float("nan"),
        "groups": len(groups),
        "drained_after_b": drained,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    worker_arguments(p, flush_every=32, num_beams=1, timeout=1800)
    p.add_argument("--backlog", type=int, default=2000, help="tenant A's one-line pages")
    p.add_argument("--idle-rounds", type=int, default=3)
    p.add_argument("--synthetic", action="store_true", help="synthetic handwriting pages")
    p.add_argument("--compare", action="store_true", help="run again with fair share off")
    p.add_argument("--drain", action="store_true", help="also time A's whole backlog")
    args = p.parse_args()

    with scratch_service(
        args, max_pages_per_job=max(args.backlog, 500), queue_refresh=1.0
    ) as settings:
        pages = make_pages(args.backlog + 1, args.synthetic)
        print(
            f"tenant A: {args.backlog} one-line pages in one job; tenant B: 1 page; model "
            f"{args.model}, batch {args.batch_size}, group {args.flush_every}, beams "
            f"{args.num_beams}, 1 worker process",
            flush=True,
        )
        modes = [True, False] if args.compare else [True]
        results = {}
        for fair in modes:
            redis.Redis.from_url(args.broker_url).flushdb()
            tag = "fair-share" if fair else "first-come"
            r = run(settings.model_copy(update={"fair_share": fair}), args, pages, tag)
            results[tag] = r
            idle = ", ".join(f"{w:.2f}" for w in r["idle_all"])
            print(
                f"{tag}: B's wait alone {r['idle']:.2f} s (median of {idle}); behind A's "
                f"backlog {r['busy']:.2f} s = {r['busy'] / r['idle']:.1f}x alone, "
                f"{r['busy'] / r['group']:.1f} median groups of {r['group']:.2f} s; "
                f"{r['a_first']} of A's {args.backlog} pages finished before B's",
                flush=True,
            )
            if r["drained_after_b"] is not None:
                print(f"{tag}: A's backlog finished {r['drained_after_b']:.1f} s after B's")
        if len(results) == 2:
            fair, fifo = results["fair-share"], results["first-come"]
            print(
                f"B's wait behind the backlog: {fair['busy']:.2f} s with fair share, "
                f"{fifo['busy']:.2f} s first come first served: "
                f"{fifo['busy'] / fair['busy']:.1f}x shorter"
            )


if __name__ == "__main__":
    main()
