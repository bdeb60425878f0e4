"""Pages per second through the whole service versus the bare recognizer on the same lines.

The service run starts a real ``htrq worker`` (Celery on Redis, results in PostgreSQL),
submits N pages through the job service and times until every page is stored. The bare run
gives the same line crops, with the same model and settings, to the same line reader the
worker builds (``worker.recognition.reading``: trim, split what is too wide, recognise,
re-join) in this process, so both sides read the same pieces; each prints how many lines it
read, and the bench stops if they differ. The ratio is what queueing, claims, decoding and
writes cost (target >= 0.9).

    .venv/bin/python bench/service_throughput.py                 # shipped model, 256 pages
    .venv/bin/python bench/service_throughput.py --model DIR --pages 128 --num-beams 1

Needs PostgreSQL and Redis (``--database-url`` / ``--broker-url``, defaults on localhost);
it creates and drops its own database and uses Redis db 14.
"""

from __future__ import annotations

import argparse
import io
import itertools
import multiprocessing
import os
import random
import re
import signal
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image, ImageDraw
from scratch import group_cpu_seconds, scratch_database, settings_env, start_service
from sqlalchemy import func, select

from htrq import jobs
from htrq.db import make_engine, make_sessions
from htrq.models import Line, Page
from htrq.queue import CelerySender, make_celery
from htrq.settings import Settings, load_settings
from htrq.storage import open_store
from htrq.tenants import default_tenant
from migrations import upgrade
from worker.recognition.pipeline import PageInput, Pipeline
from worker.recognition.reading import line_reader
from worker.serving.app import load_recognizer

ROOT = Path(__file__).resolve().parents[1]


def make_pages(n: int, seed: int = 7) -> list[bytes]:
    """N distinct line images: synthetic handwriting if the training tools are installed."""
    rng = random.Random(seed)
    try:
        from worker.training.synth import LineRenderer, TextSampler, load_fonts, sample_line

        fonts, sampler, renderer = list(load_fonts()), TextSampler(rng), LineRenderer(rng)
        images = [sample_line(rng, sampler, renderer, fonts, 40)[0] for _ in range(n)]
    except Exception:  # no fonts or fontTools: plain rendered text still exercises the path
        images = []
        for i in range(n):
            im = Image.new("L", (rng.randint(300, 700), 48), 255)
            ImageDraw.Draw(im).text((6, 16), f"line {i} " + "word " * rng.randint(2, 9), fill=0)
            images.append(im)
    out = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


class _Capture:
    """A reader that keeps the line crops the pipeline hands it and reads nothing."""

    def __init__(self) -> None:
        self.crops: list[Image.Image] = []

    def __call__(self, crops):  # type: ignore[no-untyped-def]
        self.crops.extend(crops)
        return [("", 0.0) for _ in crops]


def line_crops(pages: list[bytes], settings: Settings, mode: str) -> list[Image.Image]:
    """The line crops the service's pipeline cuts from the pages, before the reader."""
    capture = _Capture()
    Pipeline(read=capture, max_pixels=settings.max_pixels, line_margin=settings.line_margin)(
        [PageInput(key=i, data=d, mode=mode) for i, d in enumerate(pages)]
    )
    return capture.crops


class _Counting:
    """The recognizer, counting the pieces it is given (a line split in two is two)."""

    def __init__(self, rec) -> None:  # type: ignore[no-untyped-def]
        self.rec, self.pieces = rec, 0
        self.width, self.height = rec.width, rec.height

    def __call__(self, crops):  # type: ignore[no-untyped-def]
        self.pieces += len(crops)
        return self.rec(crops)


class Bare:
    """The recognizer alone on the crops the pipeline cut, with the worker's CPU layout.

    Each worker process of the service (``--concurrency``) has its counterpart here: a
    spawned process on its share of the crops with the same torch thread count, all started
    together. One process is spawned too, rather than run in the bench's own process: that
    one also holds the pages, the database engine and the broker client, and read 0.75x as
    fast per CPU-second as a fresh process on the same crops (median 13.9 against 18.4
    pages/s, 256 one-line pages, beam 4, on 2 cores).
    """

    def __init__(self, settings: Settings, crops: list[Image.Image], cpus: int) -> None:
        self.n = settings.worker_concurrency
        threads = settings.threads_per_process(cpus)
        cut = [i * len(crops) // self.n for i in range(self.n + 1)]
        shares = [crops[a:b] for a, b in itertools.pairwise(cut)]
        ctx = multiprocessing.get_context("spawn")  # never fork a process that ran torch
        self.pipes, self.procs = [], []
        for share in shares:
            here, there = ctx.Pipe()
            proc = ctx.Process(
                target=_bare_serve, args=(there, settings.model_dump(), threads, share), daemon=True
            )
            proc.start()
            self.pipes.append(here)
            self.procs.append(proc)
        for pipe in self.pipes:
            pipe.recv()  # loaded and warmed up

    def rate(self, pages: int) -> tuple[float, float]:
        """Pages per second of wall time and per second of CPU time."""
        started = time.perf_counter()
        for pipe in self.pipes:
            pipe.send("go")
        runs = [pipe.recv() for pipe in self.pipes]
        self.lines = sum(lines for _, lines, _ in runs)
        self.pieces = sum(pieces for _, _, pieces in runs)
        cpu = sum(c for c, _, _ in runs)
        return pages / (time.perf_counter() - started), pages / cpu

    def close(self) -> None:
        for pipe in getattr(self, "pipes", []):
            pipe.send(None)
        for proc in getattr(self, "procs", []):
            proc.join(timeout=30)


class _Loaded:
    def __init__(self, rec, crops: list[Image.Image]) -> None:  # type: ignore[no-untyped-def]
        self.counting = _Counting(rec)
        self.read, self.crops = line_reader(self.counting), crops


def _bare_load(settings: dict, threads: int, crops: list[Image.Image]) -> _Loaded:
    import torch

    torch.set_num_threads(threads)
    s = Settings(**settings)
    loaded = _Loaded(load_recognizer(s), crops)
    loaded.read(crops[: s.batch_size])  # warm-up, as the worker's first batch is
    return loaded


def _bare_run(loaded: _Loaded) -> tuple[float, int, int]:
    """Read every crop once: the CPU seconds it took, lines read and pieces recognised."""
    cpu = time.process_time()
    before = loaded.counting.pieces
    lines = len(loaded.read(loaded.crops))
    return time.process_time() - cpu, lines, loaded.counting.pieces - before


def _bare_serve(pipe, settings: dict, threads: int, crops: list[Image.Image]) -> None:  # type: ignore[no-untyped-def]
    loaded = _bare_load(settings, threads, crops)
    pipe.send("ready")
    while pipe.recv() is not None:
        pipe.send(_bare_run(loaded))


def wait_finished(sessions, job_id: uuid.UUID, total: int, timeout: float) -> datetime:  # type: ignore[no-untyped-def]
    """Wait until every page of the job is stored; when the last one was.

    The end time is the newest ``finished_at`` (stamped by the worker just before it commits
    the page) rather than the moment a poll notices, so polling can be slow: a query every
    50 ms took CPU from the worker on 2 cores and made the service look slower than it is.
    """
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as s:
            done, last = s.execute(
                select(func.count(), func.max(Page.finished_at)).where(
                    Page.job_id == job_id, Page.status.in_(("succeeded", "failed"))
                )
            ).one()
        if done == total:
            return last
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {done}/{total} pages finished")
        time.sleep(0.5)


class Service:
    """A real ``htrq worker`` process; pages go in through the job service."""

    def __init__(self, settings: Settings, timeout: float, mode: str, pool: str) -> None:
        assert settings.database_url
        self.mode = mode
        self.settings, self.timeout = settings, timeout
        env = settings_env(settings, TRANSFORMERS_VERBOSITY="error")
        self.log = log = Path(tempfile.gettempdir()) / "htrq-bench-worker.log"
        self.worker = start_service(["worker", "--loglevel=info", f"--pool={pool}"], env, log)
        self.engine = make_engine(settings.database_url)
        self.sessions = make_sessions(self.engine)
        self.sender = CelerySender(make_celery(settings))
        self.storage = open_store(settings)

    def run(self, pages: list[bytes]) -> tuple[float, float]:
        """Submit ``pages`` as one job; pages per second (wall, and worker CPU) until stored."""
        started, cpu = datetime.now(UTC), group_cpu_seconds(self.worker.pid)
        uploads = [jobs.Upload(f"{i}.png", d) for i, d in enumerate(pages)]
        job, _ = jobs.submit(
            sessions=self.sessions,
            tenant_id=default_tenant(self.sessions),
            storage=self.storage,
            send=self.sender,
            settings=self.settings,
            uploads=uploads,
            mode=self.mode,
        )
        self.submit_s = (datetime.now(UTC) - started).total_seconds()
        last = wait_finished(self.sessions, job.id, len(pages), self.timeout)
        with self.sessions() as s:
            self.lines = s.scalar(
                select(func.count()).select_from(Line).join(Page).where(Page.job_id == job.id)
            )
        # Sampled after the poll noticed: CPU the worker spent idling meanwhile is counted.
        cpu = group_cpu_seconds(self.worker.pid) - cpu
        return len(pages) / (last - started).total_seconds(), len(pages) / cpu

    def worker_times(self) -> tuple[int, float, float]:
        """Batches, and seconds in the pipeline and in writes, from the worker's log."""
        found = re.findall(r"\(pipeline (\d+) ms, writes (\d+) ms\)", self.log.read_text())
        return len(found), sum(int(p) for p, _ in found) / 1e3, sum(int(w) for _, w in found) / 1e3

    def close(self) -> None:
        os.killpg(self.worker.pid, signal.SIGTERM)
        self.worker.wait(timeout=60)
        self.engine.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin")
    p.add_argument("--pages", type=int, default=256)
    p.add_argument(
        "--mode",
        choices=["line", "page"],
        default="line",
        help="job mode; the bench's pages are single lines, so 'line' measures the service's "
        "own cost and 'page' adds segmentation, which the bare recognizer does not do",
    )
    p.add_argument("--pool", default="prefork", choices=["prefork", "solo"], help="worker pool")
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="worker processes (HTRQ_WORKER_CONCURRENCY); the cores are shared out among them",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--flush-every",
        type=int,
        default=128,
        help="pages per worker group; docs/settings.md advises 8 batches' worth for one-line pages",
    )
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args()

    with (
        scratch_database(args.admin_url, args.broker_url) as database_url,
        tempfile.TemporaryDirectory(prefix="htrq-bench-") as tmp,
    ):
        settings = load_settings(
            database_url=database_url,
            broker_url=args.broker_url,
            storage_dir=Path(tmp) / "blobs",
            model=args.model,
            batch_size=args.batch_size,
            flush_every=args.flush_every,
            worker_concurrency=args.concurrency,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
        )
        upgrade(settings.database_url or "")
        pages = make_pages(args.pages)
        crops = line_crops(pages, settings, args.mode)
        print(
            f"{len(pages)} pages, {len(crops)} lines, model {settings.model}, "
            f"batch {settings.batch_size}, group {settings.flush_every}, "
            f"beams {settings.num_beams}, max tokens {settings.max_new_tokens}, "
            f"mode {args.mode}, pool {args.pool}, {args.concurrency} worker processes",
            flush=True,
        )
        bare = Bare(settings, crops, cpus=len(os.sched_getaffinity(0)))
        service = Service(settings, args.timeout, args.mode, args.pool)
        try:
            # Warm-up job: the worker has started, loaded the model and run a first group.
            service.run(pages[: settings.flush_every])
            # Alternate the two, round by round: this machine's speed drifts, so each
            # round's ratio compares runs made seconds apart, and the median of those
            # ratios is the figure. Pages per CPU-second (the worker's processes against
            # this one) is a second view that other load disturbs much less than wall
            # time (PostgreSQL and Redis are not counted; the worker log has write time).
            rounds = []
            for n in range(1, args.rounds + 1):
                b, s = bare.rate(len(pages)), service.run(pages)
                rounds.append((b, s))
                print(
                    f"round {n}: bare {b[0]:.2f} pages/s ({b[1]:.2f} per CPU-s; "
                    f"{bare.lines} lines in {bare.pieces} pieces), "
                    f"service {s[0]:.2f} pages/s ({s[1]:.2f} per CPU-s; "
                    f"{service.lines} lines; submit took {service.submit_s:.2f} s), "
                    f"ratio {s[0] / b[0]:.3f}",
                    flush=True,
                )
                if bare.lines != service.lines:
                    raise SystemExit("the two sides read different numbers of lines")
            batches, pipeline_s, write_s = service.worker_times()
        finally:
            service.close()
            bare.close()
        print(
            f"worker, all jobs: {batches} batches, {pipeline_s:.1f} s in the pipeline, "
            f"{write_s:.2f} s writing results"
        )
        med = statistics.median
        ratios = [s[0] / b[0] for b, s in rounds]
        print(f"bare recognizer: {med(b[0] for b, _ in rounds):.2f} pages/s (median)")
        print(f"service:         {med(s[0] for _, s in rounds):.2f} pages/s (median)")
        print(
            f"ratio:           {med(ratios):.3f} (median of {len(rounds)} rounds, "
            f"{min(ratios):.3f}-{max(ratios):.3f}; target >= 0.9)"
        )
        print(f"ratio per CPU-s: {med(s[1] / b[1] for b, s in rounds):.3f}")


if __name__ == "__main__":
    main()
