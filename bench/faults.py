"""Pages lost and pages duplicated when the broker, the database, a worker or the API dies.

Each scenario runs real processes: its own ``redis-server`` and its own PostgreSQL cluster
(``initdb`` into a temporary directory) on spare ports, ``htrq api`` and one or two
``htrq worker`` processes on them. It submits N one-line pages as one job over HTTP
(``mode=line``), injects its fault while pages are being read, waits until every page has
finished (or ``--timeout`` runs out) and counts:

- **lost**: pages of the job that did not end ``succeeded`` (failed, or still ``queued`` or
  ``running`` at the timeout);
- **duplicated**: pages whose recognition result was stored more than once. The bench
  installs two audit triggers in its own database: one row for every change of a page's
  status, and one row for every line inserted, with the id of the transaction that inserted
  it. Audit rows are written in the writer's own transaction, so a write that was rolled
  back leaves none: the figures count committed effects only. A page is duplicated if it
  went to ``succeeded`` more than once, or had lines inserted by more than one transaction.
  In the API scenario, every page of a second job under the same ``Idempotency-Key`` counts
  as duplicated too;
- **re-read** (not a fault): pages claimed more than once, so that their recognition ran
  again after the fault (a claim that died with its worker, or a result whose write failed),
  of which only one result could be stored; and, as a cross-check, the results the workers
  logged as stored (``batch of N: ... succeeded K``), which must add up to the pages.

Scenarios (all by default; each flag selects one):

- ``--redis``: Redis killed with SIGKILL mid-run and restarted empty on the same port (no
  RDB, no AOF: every queued and unacknowledged message is gone). The workers reconnect and
  the sweeper re-sends the pages whose message was lost.
- ``--postgres``: PostgreSQL stopped mid-run (``pg_ctl stop -m fast``), 30 s
  (``--pg-down``) without it, started again. Claims and writes fail; pages go back to the
  queue with backoff, or wait for their lease to expire.
- ``--worker``: two workers; one of them killed with SIGKILL (its whole process group) while
  it is reading a batch (its processes are using CPU and pages are ``running``). The other
  keeps going; the dead one's pages come back through the lease and the sweeper.
- ``--api``: the API killed while a client streams a large multipart upload (the pages padded
  with a PNG text chunk to ~``--pad-kb`` each, sent slowly), restarted, and the upload sent
  again with the same ``Idempotency-Key``; then killed again after it committed the job but
  before it answered (the bench holds a lock on the table the API reads last), restarted, and
  sent a third time: there must be exactly one job, answered 201 then 200.

Short lease and sweep settings make the service recover within the run (``HTRQ_LEASE_SECONDS``
60, ``HTRQ_SWEEP_INTERVAL`` 2, ``HTRQ_QUEUED_GRACE_SECONDS`` 10, backoff 1 s to 5 s, groups
of 4 pages); the built-in model reads greedily with one torch thread per worker. Printed: one
table row per scenario (pages, lost, duplicated, re-read, wall seconds from submit to the last
page, notes).

    .venv/bin/python bench/faults.py                   # all four scenarios, 40 pages each
    .venv/bin/python bench/faults.py --redis --pages 60

Needs ``redis-server`` and PostgreSQL's server binaries (``--pg-bin``); run as root it runs
PostgreSQL as the ``postgres`` user. Nothing else on the machine is touched: ports 6400-6409
and 5440-5449 by default, files under a temporary directory, every process it starts stopped
by its own pid.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from PIL import Image, ImageDraw, PngImagePlugin
from scratch import group_cpu_seconds, htrq_free_env, start_service

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["the", "of", "and", "to", "in", "was", "his", "letter", "house", "river", "road"]

#: Settings of every process the bench starts: short enough for recovery within a run.
SERVICE_SETTINGS = {
    "HTRQ_AUTH": "off",
    "HTRQ_LEASE_SECONDS": "60",
    "HTRQ_SWEEP_INTERVAL": "2",
    "HTRQ_QUEUED_GRACE_SECONDS": "10",
    "HTRQ_RETRY_BACKOFF": "1",
    "HTRQ_RETRY_BACKOFF_MAX": "5",
    "HTRQ_NUM_BEAMS": "1",
    "HTRQ_MAX_NEW_TOKENS": "32",
    "HTRQ_BATCH_SIZE": "4",
    "HTRQ_FLUSH_EVERY": "4",
    "HTRQ_FLUSH_INTERVAL": "0.5",
    "HTRQ_TORCH_THREADS": "1",
    "HTRQ_WORKER_CONCURRENCY": "1",
}

AUDIT_SQL = """
CREATE TABLE fault_audit (
    id bigserial PRIMARY KEY,
    page_id uuid NOT NULL,
    old_status text,
    new_status text,
    attempts int,
    error_code text,
    txid bigint NOT NULL DEFAULT txid_current(),
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE fault_line_audit (
    page_id uuid NOT NULL,
    txid bigint NOT NULL DEFAULT txid_current()
);
CREATE FUNCTION fault_audit_page() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_audit (page_id, old_status, new_status, attempts, error_code)
    VALUES (NEW.id, OLD.status, NEW.status, NEW.attempts, NEW.error_code);
    RETURN NULL;
END $$;
CREATE FUNCTION fault_audit_line() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_line_audit (page_id) VALUES (NEW.page_id);
    RETURN NULL;
END $$;
CREATE TRIGGER fault_audit_page AFTER UPDATE ON pages FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION fault_audit_page();
CREATE TRIGGER fault_audit_line AFTER INSERT ON lines FOR EACH ROW
    EXECUTE FUNCTION fault_audit_line();
"""


# -- the page images --------------------------------------------------------------------------


def make_pages(n: int, *, pad_bytes: int = 0, seed: int = 11) -> list[bytes]:
    """N distinct one-line PNGs of a few words; ``pad_bytes`` of text chunk make them big."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))
        im = Image.new("L", (16 + 7 * len(text), 40), 255)
        ImageDraw.Draw(im).text((8, 14), text, fill=0)
        info = PngImagePlugin.PngInfo()
        if pad_bytes:
            info.add_text("padding", rng.randbytes(pad_bytes // 2).hex())
        buf = io.BytesIO()
        im.save(buf, "PNG", pnginfo=info)
        out.append(buf.getvalue())
    return out


def multipart(pages: list[bytes]) -> tuple[bytes, str]:
    """The body of a ``POST /v1/jobs`` with ``mode=line`` and the pages, and its type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="mode"\r\n\r\nline\r\n'.encode()
    ]
    for i, data in enumerate(pages):
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="p{i:03d}.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        parts += [head.encode(), data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# -- processes --------------------------------------------------------------------------------


def free_port(candidates: range) -> int:
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no free port in {candidates.start}-{candidates.stop - 1}")


def wait_for(what: str, ok, timeout: float, every: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


class RedisServer:
    """A ``redis-server`` of the bench's own, without persistence: a restart starts empty."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        log = (self.workdir / f"redis-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_for("redis", self.ping, 30)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def keys(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"DBSIZE\r\n")
            return int(s.recv(64)[1:].strip())

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


class Postgres:
    """A PostgreSQL cluster of the bench's own (``initdb`` into a temporary directory)."""

    def __init__(self, port: int, workdir: Path, pg_bin: Path) -> None:
        self.port, self.bin = port, pg_bin
        self.data = workdir / "pgdata"
        self.log = workdir / "postgres.log"
        self.as_postgres = os.geteuid() == 0
        workdir.mkdir()
        if self.as_postgres:
            shutil.chown(workdir, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        opts = f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, db: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str) -> psycopg.Connection:
        return psycopg.connect(self.url(db), autocommit=True, connect_timeout=5)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal its whole process group (it was started in a session of its own)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@dataclass
class Service:
    """``htrq api`` and ``htrq worker`` processes on the bench's own Redis and database."""

    env: dict[str, str]
    workdir: Path
    api_port: int
    procs: list[Proc] = field(default_factory=list)
    api: Proc | None = None
    api_start_s: float = 0.0

    def _spawn(self, name: str, *args: str) -> Proc:
        n = sum(1 for p in self.procs if p.name.startswith(name))
        log = self.workdir / f"{name}-{n}.log"
        proc = Proc(name, start_service(list(args), self.env, log), log)
        self.procs.append(proc)
        return proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start_api(self) -> Proc:
        self.api = self._spawn("api", "api", "--port", str(self.api_port), "--loglevel", "warning")

        def up() -> bool:
            assert self.api is not None
            if not self.api.alive():
                raise SystemExit(f"the API exited:\n{self.api.text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        started = time.monotonic()
        wait_for("the API", up, 600)
        self.api_start_s = time.monotonic() - started
        return self.api

    def start_worker(self, name: str) -> Proc:
        return self._spawn(name, "worker", "--loglevel=info", f"--hostname={name}@%h")

    def wait_ready(self, worker: Proc, timeout: float = 1800) -> None:
        def ready() -> bool:
            if not worker.alive():
                raise SystemExit(f"{worker.name} exited:\n{worker.text()[-3000:]}")
            return "worker process ready" in worker.text() and " ready." in worker.text()

        wait_for(f"{worker.name} to load its model", ready, timeout, every=0.5)

    def stop(self) -> None:
        for p in self.procs:
            p.kill(signal.SIGTERM)


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    pages: int = 0
    lost: int = 0
    duplicated: int = 0
    reread: int = 0
    wall: float = 0.0
    notes: list[str] = field(default_factory=list)


def status_counts(conn: psycopg.Connection, job_id: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) FROM pages WHERE job_id = %s GROUP BY status", (job_id,)
    ).fetchall()
    return {status: n for status, n in rows}


def wait_done(conn_of, job_id: str, total: int, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Wait until every page of the job finished; the time it took (or the timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with conn_of() as conn:
                counts = status_counts(conn, job_id)
        except psycopg.OperationalError:
            counts = {}  # the database is down in this very scenario
        if counts.get("succeeded", 0) + counts.get("failed", 0) == total:
            break
        time.sleep(1)
    return time.monotonic() - started


def count(conn: psycopg.Connection, job_ids: list[str], row: Row, logs: list[str]) -> None:
    """Fill ``row`` with the job's lost, duplicated and re-read pages (see the docstring)."""
    first = job_ids[0]
    counts = status_counts(conn, first)
    row.pages = sum(counts.values())
    row.lost = row.pages - counts.get("succeeded", 0)
    if row.lost:
        row.notes.append("not succeeded: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        errors = conn.execute(
            "SELECT error_code, count(*) FROM pages WHERE job_id = %s AND status <> 'succeeded' "
            "GROUP BY error_code",
            (first,),
        ).fetchall()
        row.notes.append("errors: " + ", ".join(f"{n} {c}" for c, n in errors))
    twice = conn.execute(
        """
        SELECT count(*) FROM pages p WHERE p.job_id = %s AND (
            (SELECT count(*) FROM fault_audit a
              WHERE a.page_id = p.id AND a.new_status = 'succeeded') > 1
         OR (SELECT count(DISTINCT l.txid) FROM fault_line_audit l WHERE l.page_id = p.id) > 1)
        """,
        (first,),
    ).fetchone()
    extra = conn.execute(
        "SELECT count(*) FROM pages WHERE job_id = ANY(%s)", ([uuid.UUID(j) for j in job_ids[1:]],)
    ).fetchone()
    row.duplicated = twice[0] + extra[0]
    reread = conn.execute(
        """
        SELECT count(*) FROM (SELECT a.page_id FROM fault_audit a JOIN pages p ON p.id = a.page_id
        WHERE p.job_id = %s AND a.new_status = 'running' GROUP BY a.page_id
        HAVING count(*) > 1) t
        """,
        (first,),
    ).fetchone()
    row.reread = reread[0]
    taken = conn.execute(
        """
        SELECT count(*) FILTER (WHERE a.old_status = 'running' AND a.new_status = 'queued'
                                  AND a.error_code = 'worker_lost'),
               count(*) FILTER (WHERE a.old_status = 'running' AND a.new_status = 'queued'
                                  AND a.error_code IS DISTINCT FROM 'worker_lost')
        FROM fault_audit a JOIN pages p ON p.id = a.page_id WHERE p.job_id = %s
        """,
        (first,),
    ).fetchone()
    if taken[0]:
        row.notes.append(f"{taken[0]} leases expired and taken back")
    if taken[1]:
        row.notes.append(f"{taken[1]} released for retry")
    logged = sum(
        int(n)
        for log in logs
        for n in re.findall(r"batch of \d+: claimed \d+, succeeded (\d+)", log)
    )
    resent = sum(int(n) for log in logs for n in re.findall(r"(\d+) lost messages re-sent", log))
    row.notes.append(f"results logged by workers: {logged}")
    if resent:
        row.notes.append(f"sweeper re-sent {resent}")


# -- the scenarios ----------------------------------------------------------------------------


class Bench:
    """One Redis, one PostgreSQL database, the API and two workers, shared by the scenarios
    (a worker takes minutes to load its model on a busy 2-core machine); each scenario submits
    its own job and counts only its pages."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.redis = RedisServer(free_port(range(6400, 6410)), workdir)
        self.pg = Postgres(free_port(range(5440, 5450)), workdir / "pg", Path(args.pg_bin))
        self.db = "faults"
        self.seed = 0

    def start(self) -> None:
        self.redis.start()
        self.pg.start()
        with self.pg.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        env = htrq_free_env()
        env.update(SERVICE_SETTINGS)
        env.update(
            HTRQ_DATABASE_URL=self.pg.url(self.db, "postgresql+psycopg"),
            HTRQ_BROKER_URL=self.redis.url,
            HTRQ_STORAGE_DIR=str(self.workdir / "blobs"),
            TRANSFORMERS_VERBOSITY="error",
        )
        subprocess.run([sys.executable, "-m", "htrq.cli", "migrate"], env=env, check=True)
        with self.conn() as conn:
            conn.execute(AUDIT_SQL)
        self.svc = Service(env=env, workdir=self.workdir, api_port=free_port(range(8470, 8490)))
        self.svc.start_api()
        self.a, self.b = self.svc.start_worker("worker-a"), self.svc.start_worker("worker-b")
        self.svc.wait_ready(self.a)
        self.svc.wait_ready(self.b)

    def stop(self) -> None:
        if hasattr(self, "svc"):
            self.svc.stop()
        self.redis.kill()
        with contextlib.suppress(subprocess.CalledProcessError):
            self.pg.stop()

    def conn(self) -> psycopg.Connection:
        return self.pg.connect(self.db)

    def pages(self, pad_bytes: int = 0) -> list[bytes]:
        self.seed += 1  # other bytes for each scenario: no file is shared between jobs
        return make_pages(self.args.pages, pad_bytes=pad_bytes, seed=self.seed)

    def submit(self, pages: list[bytes]) -> str:
        body, ctype = multipart(pages)
        r = httpx.post(
            f"{self.svc.url}/v1/jobs",
            content=body,
            headers={"Content-Type": ctype, "Idempotency-Key": uuid.uuid4().hex},
            timeout=120,
        )
        r.raise_for_status()
        return str(r.json()["id"])

    def wait_progress(self, job_id: str, share: float) -> None:
        """Until ``share`` of the pages succeeded and some are being read (``running``)."""

        def ok() -> bool:
            with self.conn() as conn:
                c = status_counts(conn, job_id)
            return c.get("succeeded", 0) >= share * self.args.pages and c.get("running", 0) > 0

        wait_for("pages to be read", ok, self.args.timeout, every=0.1)

    def workers(self) -> list[Proc]:
        return [p for p in self.svc.procs if p.name.startswith("worker")]

    def log_marks(self) -> dict[Path, int]:
        return {w.log: len(w.text()) for w in self.workers()}

    def finish(self, row: Row, job_ids: list[str], started: float, marks: dict[Path, int]) -> Row:
        waited = wait_done(self.conn, job_ids[0], self.args.pages, self.args.timeout)
        row.wall = time.monotonic() - started
        if waited >= self.args.timeout:
            row.notes.append(f"timed out after {self.args.timeout:g} s")
        logs = [w.text()[marks.get(w.log, 0) :] for w in self.workers()]
        with self.conn() as conn:
            count(conn, job_ids, row, logs)
        return row

    def run_redis(self) -> Row:
        row = Row("redis SIGKILL, restarted empty")
        marks, started = self.log_marks(), time.monotonic()
        job = self.submit(self.pages())
        self.wait_progress(job, 0.25)
        self.redis.kill()
        self.redis.start()
        row.notes.append(f"killed at {time.monotonic() - started:.0f} s")
        row.notes.append(f"keys after restart: {self.redis.keys()}")
        return self.finish(row, [job], started, marks)

    def run_postgres(self) -> Row:
        row = Row(f"postgres stopped {self.args.pg_down:g} s")
        marks, started = self.log_marks(), time.monotonic()
        job = self.submit(self.pages())
        self.wait_progress(job, 0.25)
        self.pg.stop()
        row.notes.append(f"stopped at {time.monotonic() - started:.0f} s")
        time.sleep(self.args.pg_down)
        self.pg.start()
        return self.finish(row, [job], started, marks)

    def run_worker(self) -> Row:
        """Kill worker-a while it reads a batch; worker-b keeps going (run last)."""
        row = Row("worker SIGKILL mid-batch")
        a, b = self.a, self.b
        marks, started = self.log_marks(), time.monotonic()
        job = self.submit(self.pages())
        self.wait_progress(job, 0.2)

        # Mid-batch: pages are running and the victim's processes are busy reading.
        def busy() -> bool:
            before = group_cpu_seconds(a.popen.pid)
            time.sleep(0.3)
            with self.conn() as conn:
                running = status_counts(conn, job).get("running", 0)
            return running > 0 and group_cpu_seconds(a.popen.pid) - before > 0.05

        wait_for("worker-a to be reading", busy, self.args.timeout, every=0)
        b_seen = len(b.text())
        a.kill()
        row.notes.append(f"killed at {time.monotonic() - started:.0f} s")
        self.finish(row, [job], started, marks)
        b_after = sum(int(n) for n in re.findall(r"succeeded (\d+)", b.text()[b_seen:]))
        row.notes.append(f"worker-b stored {b_after} after the kill")
        return row

    def run_api(self) -> Row:
        row = Row("api SIGKILL mid-upload")
        pages = self.pages(pad_bytes=self.args.pad_kb * 1024)
        body, ctype = multipart(pages)
        key = uuid.uuid4().hex
        headers = {"Content-Type": ctype, "Idempotency-Key": key}
        svc = self.svc
        url = f"{svc.url}/v1/jobs"
        marks, started = self.log_marks(), time.monotonic()

        def jobs_under_key() -> list[str]:
            with self.conn() as conn:
                rows = conn.execute(
                    "SELECT id FROM jobs WHERE idempotency_key = %s ORDER BY created_at", (key,)
                ).fetchall()
            return [str(i) for (i,) in rows]

        # 1. Killed while the body streams in: the client's request fails, nothing is stored.
        sent, cut, chunk = 0, len(body) // 2, 64 * 1024

        def slow() -> Iterator[bytes]:
            nonlocal sent
            for i in range(0, len(body), chunk):
                if sent >= cut and svc.api is not None and svc.api.alive():
                    svc.api.kill()
                yield body[i : i + chunk]
                sent += min(chunk, len(body) - i)
                time.sleep(0.005)

        try:
            r = httpx.post(url, content=slow(), headers=headers, timeout=120)
            row.notes.append(f"1st answered HTTP {r.status_code}")
        except httpx.HTTPError as exc:
            row.notes.append(
                f"1st cut at {sent / 1e6:.1f} of {len(body) / 1e6:.1f} MB ({type(exc).__name__}), "
                f"{len(jobs_under_key())} jobs"
            )
        svc.start_api()
        row.notes.append(f"restarted in {svc.api_start_s:.0f} s")

        # 2. Killed after it committed the job, before it answered: the bench holds the
        # webhook table, which the API reads last to build its answer.
        lock = self.conn()
        lock.autocommit = False
        lock.execute("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE")
        answer: list[httpx.Response | Exception] = []

        def post() -> None:
            try:
                answer.append(httpx.post(url, content=body, headers=headers, timeout=120))
            except httpx.HTTPError as exc:
                answer.append(exc)

        thread = threading.Thread(target=post)
        thread.start()
        wait_for("the job to be committed", jobs_under_key, 120, every=0.05)
        time.sleep(1)  # it sends the pages, then waits on the lock
        assert svc.api is not None
        svc.api.kill()
        lock.rollback()
        lock.close()
        thread.join()
        got = answer[0]
        what = type(got).__name__ if isinstance(got, Exception) else f"HTTP {got.status_code}"
        row.notes.append(f"2nd killed after its commit ({what})")
        svc.start_api()

        # 3. The same request again: the first job, answered 200, and once more.
        codes = []
        for _ in range(2):
            r = httpx.post(url, content=body, headers=headers, timeout=120)
            codes.append(r.status_code)
        ids = jobs_under_key()
        row.notes.append(f"3rd and 4th answered {codes[0]}, {codes[1]}")
        row.notes.append(f"jobs under the key: {len(ids)}")
        if not ids:
            row.lost = self.args.pages
            return row
        if r.status_code < 300 and r.json()["id"] != ids[0]:
            row.notes.append("the answer names another job")
        return self.finish(row, ids, started, marks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis", action="store_true", help="kill Redis, restart it empty")
    p.add_argument("--postgres", action="store_true", help="stop PostgreSQL for --pg-down s")
    p.add_argument("--api", action="store_true", help="kill the API mid-upload and after commit")
    p.add_argument("--worker", action="store_true", help="kill one of two workers mid-batch")
    p.add_argument("--pages", type=int, default=40, help="one-line pages per scenario")
    p.add_argument("--pg-down", type=float, default=30.0, help="seconds without PostgreSQL")
    p.add_argument("--pad-kb", type=int, default=256, help="text chunk per page (--api)")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the pages")
    p.add_argument("--pg-bin", default="/usr/lib/postgresql/15/bin")
    p.add_argument("--keep", action="store_true", help="keep the logs and data directory")
    args = p.parse_args()
    # The worker scenario kills a worker, so it runs last.
    order = ("redis", "postgres", "api", "worker")
    chosen = [s for s in order if getattr(args, s)] or list(order)

    workdir = Path(tempfile.mkdtemp(prefix="htrq-faults-"))
    os.chmod(workdir, 0o755)
    bench = Bench(args, workdir)
    rows: list[Row] = []
    try:
        bench.start()
        print(
            f"{args.pages} one-line pages per scenario; Redis :{bench.redis.port}, "
            f"PostgreSQL :{bench.pg.port}, logs in {workdir}",
            flush=True,
        )
        for name in chosen:
            try:
                row = getattr(bench, f"run_{name}")()
            except (Exception, SystemExit) as exc:  # report it, and go on with the next
                row = Row(name, notes=[f"bench failed: {exc}"])
            rows.append(row)
            print(
                f"{row.scenario}: {row.pages} pages, {row.lost} lost, {row.duplicated} "
                f"duplicated, {row.reread} re-read, {row.wall:.0f} s; " + "; ".join(row.notes),
                flush=True,
            )
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("| scenario | pages | lost | duplicated | re-read | wall s | notes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.scenario} | {r.pages} | {r.lost} | {r.duplicated} | {r.reread} | "
            f"{r.wall:.0f} | {'; '.join(r.notes)} |"
        )


if __name__ == "__main__":
    main()
