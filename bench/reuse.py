"""Reuse: the same pages sent again as a new job, against their first reading.

A real ``htrq worker`` (Celery with celery-batches on Redis, results in PostgreSQL) reads
``--pages`` distinct one-line pages submitted as one job through the job service; then the
same pages are submitted again as a new job of the same tenant, whose pages take the first
job's readings instead of being read (``htrq.jobs.reuse``). For each job the bench prints
the time from the submit call to the last page's ``finished_at``, the submit call's own
seconds, the worker's CPU seconds (its whole process group, from /proc) and those of the
PostgreSQL backends serving the bench's database, side by side, and the ratios. It checks
that every page of the second job succeeded with ``reused_from`` and its original's lines,
and counts the readings from the worker's batch lines (``read N, reused N``). ``--fresh``
adds a third job of the same pages with ``reuse=False``: the cost of reading them again.

    .venv/bin/python bench/reuse.py                       # built-in model, 1,000 pages
    .venv/bin/python bench/reuse.py --model tiny --pages 200

Needs PostgreSQL and Redis (``--admin-url`` / ``--broker-url``); it creates and drops its own
database and flushes the Redis database it is given (default db 14).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fair_share import make_pages
from PIL import Image, ImageDraw
from scratch import WorkerBench, group_cpu_seconds, scratch_service, worker_arguments
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from htrq.models import Line, Page
from htrq.settings import Settings
from htrq.tenants import default_tenant


@dataclass(frozen=True)
class Run:
    """One job's figures."""

    pages: int
    submit_s: float  #: the submit call alone (storing the files, inserting the rows, sending)
    wall_s: float  #: from the submit call to the last page's finished_at
    worker_cpu_s: float
    db_cpu_s: float
    read: int  #: pages the worker read (its batch lines)
    reused: int  #: pages the worker stored as copies


def backend_cpu_seconds(sessions: sessionmaker[Session], database: str) -> float:
    """CPU time used so far by the PostgreSQL backends connected to ``database`` (/proc;
    the server runs on this machine). Pooled connections live through a run, so the
    difference over a run is the database's work for it."""
    with sessions() as s:
        pids = s.scalars(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": database}
        ).all()
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Service(WorkerBench):
    """A real worker process; jobs of the default tenant, read and read again."""

    def __init__(self, settings: Settings, log: Path) -> None:
        super().__init__(settings, log)
        assert settings.database_url
        self.database = settings.database_url.rsplit("/", 1)[1]
        self.tenant = default_tenant(self.sessions)
        self.last_job: uuid.UUID | None = None

    def wait(self, job_id: uuid.UUID, n: int, timeout: float) -> datetime:
        deadline = time.monotonic() + timeout
        while True:
            with self.sessions() as s:
                done, failed, last = s.execute(
                    select(
                        func.count(),
                        func.count().filter(Page.status == "failed"),
                        func.max(Page.finished_at),
                    ).where(Page.job_id == job_id, Page.status.in_(["succeeded", "failed"]))
                ).one()
            if failed:
                raise SystemExit(f"{failed} pages of {job_id} failed")
            if done >= n and last is not None:
                return last
            if self.worker.poll() is not None:
                raise SystemExit(f"the worker exited:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {done}/{n} pages of {job_id} finished")
            time.sleep(0.2)

    def counted(self, what: str) -> int:
        return sum(int(n) for n in re.findall(rf"{what} (\d+)", self.log.read_text()))

    def run(self, pages: list[bytes], timeout: float, *, reuse: bool = True) -> Run:
        cpu, db = group_cpu_seconds(self.worker.pid), self.db_cpu()
        read, reused = self.counted("read"), self.counted("reused")
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        job = self.submit(self.tenant, pages, reuse=reuse)
        submit_s = time.perf_counter() - t0
        last = self.wait(job, len(pages), timeout)
        time.sleep(1.0)  # the batch line is logged after the group's last write
        self.last_job = job
        return Run(
            pages=len(pages),
            submit_s=submit_s,
            wall_s=(last - started).total_seconds(),
            worker_cpu_s=group_cpu_seconds(self.worker.pid) - cpu,
            db_cpu_s=self.db_cpu() - db,
            read=self.counted("read") - read,
            reused=self.counted("reused") - reused,
        )

    def db_cpu(self) -> float:
        return backend_cpu_seconds(self.sessions, self.database)

    def check_copies(self, original: uuid.UUID, copy: uuid.UUID) -> None:
        """Every page of ``copy`` took its original's reading: reused_from and its lines."""
        with self.sessions() as s:
            pages = {
                p.index: p for p in s.scalars(select(Page).where(Page.job_id.in_([original, copy])))
                if p.job_id == copy
            }  # fmt: skip
            bad = [
                i
                for i, p in pages.items()
                if (p.reused_from_job, p.reused_from_page) != (original, i)
            ]
            lines = dict(
                s.execute(
                    select(Page.job_id, func.count())
                    .join(Line, Line.page_id == Page.id)
                    .where(Page.job_id.in_([original, copy]))
                    .group_by(Page.job_id)
                ).all()
            )
        if bad or lines.get(original) != lines.get(copy):
            raise SystemExit(
                f"copies wrong: {len(bad)} pages not from their original; lines {lines}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    worker_arguments(p, flush_every=64, num_beams=4, timeout=3600)
    p.add_argument("--pages", type=int, default=1000, help="one-line pages per job")
    p.add_argument("--fresh", action="store_true", help="a third job with reuse=False")
    args = p.parse_args()

    with scratch_service(args, max_pages_per_job=max(args.pages, 500)) as settings:
        pages = make_pages(args.pages, synthetic=False)
        print(
            f"{args.pages} distinct one-line pages per job; model {args.model}, beams "
            f"{args.num_beams}, batch {args.batch_size}, group {args.flush_every}, 1 worker "
            "process",
            flush=True,
        )
        log = settings.storage_dir.parent / "worker.log"
        service = Service(settings, log)
        try:
            # Warm-up: the worker has started and loaded its model (other pages, not reused).
            service.wait(service.submit(service.tenant, [_warm()]), 1, args.timeout)
            runs: dict[str, Run] = {}
            runs["first reading"] = service.run(pages, args.timeout)
            first_job = service.last_job
            runs["same pages again"] = service.run(pages, args.timeout)
            assert first_job is not None and service.last_job is not None
            service.check_copies(first_job, service.last_job)
            if args.fresh:
                runs["again, reuse=false"] = service.run(pages, args.timeout, reuse=False)
        finally:
            service.close()
    print("| job | pages | read | reused | submit call | to all succeeded | pages/s | "
          "worker CPU | per page | PostgreSQL CPU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(
            f"| {name} | {r.pages} | {r.read} | {r.reused} | {r.submit_s:.1f} s | "
            f"{r.wall_s:.1f} s | {r.pages / r.wall_s:.1f} | {r.worker_cpu_s:.1f} s | "
            f"{1000 * r.worker_cpu_s / r.pages:.1f} ms | {r.db_cpu_s:.1f} s |"
        )
    a, b = runs["first reading"], runs["same pages again"]
    print(
        f"again / first: time {b.wall_s / a.wall_s:.3f} ({a.wall_s / b.wall_s:.1f}x faster), "
        f"worker CPU {b.worker_cpu_s / a.worker_cpu_s:.3f} "
        f"({a.worker_cpu_s / max(b.worker_cpu_s, 1e-9):.1f}x less), PostgreSQL CPU "
        f"{b.db_cpu_s / max(a.db_cpu_s, 1e-9):.2f}"
    )


def _warm() -> bytes:
    """A page that is none of the measured ones."""
    im = Image.new("L", (360, 48), 255)
    ImageDraw.Draw(im).text((6, 16), "warming up the worker", fill=0)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


if __name__ == "__main__":
    main()
