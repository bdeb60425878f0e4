"""Pages per second through the whole service versus the bare recognizer on the same lines.

The service run starts a real ``htrq worker`` (Celery on Redis, results in PostgreSQL),
submits N pages through the job service and times until every page is stored. The bare run
gives the same line crops, with the same model and settings, straight to the recognizer in
this process. The ratio is what queueing, claims, decoding and writes cost (target >= 0.9).

    .venv/bin/python bench/service_throughput.py                 # shipped model, 64 pages
    .venv/bin/python bench/service_throughput.py --model DIR --pages 128 --num-beams 1

Needs PostgreSQL and Redis (``--database-url`` / ``--broker-url``, defaults on localhost);
it creates and drops its own database and uses Redis db 14.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis
from PIL import Image, ImageDraw
from sqlalchemy import func, select

from htrq import jobs
from htrq.db import make_engine, make_sessions, upgrade
from htrq.models import Page
from htrq.queue import CelerySender, make_celery
from htrq.settings import Settings, load_settings
from htrq.storage import DirectoryStore
from worker.app import load_recognizer
from worker.pipeline import PageInput, Pipeline

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


def line_crops(pages: list[bytes], settings: Settings) -> list[Image.Image]:
    """The crops the service's pipeline cuts from the pages (captured, not recognised)."""
    crops: list[Image.Image] = []

    def capture(batch):  # type: ignore[no-untyped-def]
        crops.extend(batch)
        return [type("R", (), {"text": "", "confidence": 0.0})() for _ in batch]

    Pipeline(recognize=capture, max_pixels=settings.max_pixels, line_margin=settings.line_margin)(
        [PageInput(key=i, data=d) for i, d in enumerate(pages)]
    )
    return crops


def bare_rate(settings: Settings, crops: list[Image.Image], pages: int) -> float:
    rec = load_recognizer(settings)
    rec(crops[: settings.batch_size])  # warm-up, as the worker's first batch would be
    started = time.perf_counter()
    rec(crops)
    return pages / (time.perf_counter() - started)


def wait_finished(sessions, job_id: uuid.UUID, total: int, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as s:
            done = s.scalar(
                select(func.count()).where(
                    Page.job_id == job_id, Page.status.in_(("succeeded", "failed"))
                )
            )
        if done == total:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {done}/{total} pages finished")
        time.sleep(0.05)


def service_rate(settings: Settings, pages: list[bytes], timeout: float) -> float:
    assert settings.database_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("HTRQ_")}
    env.update(
        {f"HTRQ_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None}
    )
    env["TRANSFORMERS_VERBOSITY"] = "error"
    log = Path(tempfile.gettempdir()) / "htrq-bench-worker.log"
    with log.open("wb") as out:  # the worker keeps its own copy of the descriptor
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "htrq"), "worker", "--loglevel=warning"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sessions = make_sessions(make_engine(settings.database_url))
    sender = CelerySender(make_celery(settings))
    storage = DirectoryStore(settings.storage_dir)

    def submit(batch: list[bytes]) -> uuid.UUID:
        uploads = [jobs.Upload(f"{i}.png", d) for i, d in enumerate(batch)]
        job, _ = jobs.submit(
            sessions=sessions, storage=storage, send=sender, settings=settings, uploads=uploads
        )
        return job.id

    try:
        # Warm-up job: the worker has started, loaded the model and run a first group.
        warm = pages[: settings.flush_every]
        wait_finished(sessions, submit(warm), len(warm), timeout)
        started = time.perf_counter()
        wait_finished(sessions, submit(pages), len(pages), timeout)
        return len(pages) / (time.perf_counter() - started)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin")
    p.add_argument("--pages", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--flush-every", type=int, default=32)
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args()

    redis.Redis.from_url(args.broker_url).flushdb()  # only this benchmark's messages
    db = f"htrq_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    base = args.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        with tempfile.TemporaryDirectory(prefix="htrq-bench-") as tmp:
            settings = load_settings(
                database_url=f"{base}/{db}",
                broker_url=args.broker_url,
                storage_dir=Path(tmp) / "blobs",
                model=args.model,
                batch_size=args.batch_size,
                flush_every=args.flush_every,
                num_beams=args.num_beams,
                max_new_tokens=args.max_new_tokens,
            )
            upgrade(settings.database_url or "")
            pages = make_pages(args.pages)
            crops = line_crops(pages, settings)
            print(
                f"{len(pages)} pages, {len(crops)} lines, model {settings.model}, "
                f"batch {settings.batch_size}, group {settings.flush_every}, "
                f"beams {settings.num_beams}, max tokens {settings.max_new_tokens}",
                flush=True,
            )
            bare = bare_rate(settings, crops, len(pages))
            print(f"bare recognizer: {bare:.2f} pages/s", flush=True)
            service = service_rate(settings, pages, args.timeout)
            print(f"service:         {service:.2f} pages/s", flush=True)
            print(f"ratio:           {service / bare:.3f} (target >= 0.9)")
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
