"""The API under load: submissions per second and status-poll latency at 100 concurrent clients.

    .venv/bin/python bench/api_load.py                        # 1,000 and 100,000 jobs, 1 process
    .venv/bin/python bench/api_load.py --api-workers 1 2      # compare uvicorn process counts
    .venv/bin/python bench/api_load.py --levels 1000 --seconds 5 --explain

A real ``htrq api`` (uvicorn, ``--workers N``) runs on a PostgreSQL database made for the run
(migrated with ``htrq migrate``, dropped at the end) and a Redis server the bench starts on a
free port (no persistence, stopped at the end). No worker runs: submitted pages stay queued,
which is all the API sees of workers anyway. The database is seeded by SQL
(``INSERT ... SELECT generate_series``) to each level of jobs, spread over ten tenants (the
bench key's, ``default`` and eight others) with one to three pages each, most finished, a
tenth with a completion webhook event. Jobs the submissions add are deleted after each phase,
so every phase sees its level.

Each phase runs ``--clients`` connections (HTTP/1.1 keep-alive, a small raw asyncio client, so
that the load generator costs little CPU beside the server) for ``--warmup`` + ``--seconds``
seconds, counting the answers that end within the measured seconds:

- ``submit``: ``POST /v1/jobs`` with one small PNG each (every body different, as real pages
  are: identical files share one stored blob and its lock), answered 201;
- ``poll``: ``GET /v1/jobs/{id}`` of random jobs of the caller's tenant;
- ``list``: ``GET /v1/jobs?limit=50``, the newest page of the caller's list.

each with ``HTRQ_AUTH=required`` (a Bearer key from ``htrq keys create``) and ``HTRQ_AUTH=off``.
Printed: a table of requests/s, p50/p99/max latency and non-2xx answers per phase, the ratios
(auth on : off, 100k : 1k), and with ``--explain`` the plans of the poll and list queries at
each level. Needs PostgreSQL on localhost (``--admin-url``) and ``redis-server`` on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from PIL import Image, ImageDraw
from scratch import htrq_free_env

HTRQ = str(Path(sys.executable).parent / "htrq")
#: The bench key's tenant; the other seeded tenants are ``bench-1`` ... ``bench-8``.
TENANT = "load"
#: Seeded jobs are spread round-robin over this many tenants (the bench's, default, 8 others).
TENANTS = 10


# -- a tiny HTTP/1.1 keep-alive client ---------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; its status and whether the server closes the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            raise RuntimeError("chunked answers are not expected from these routes")
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    if length:
        await reader.readexactly(length)
    return status, close


@dataclass
class Result:
    """What one phase measured."""

    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)  #: of answers in 2xx, seconds
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    #: Answers during warm-up and measurement, and the API's CPU seconds over both.
    answered: int = 0
    api_cpu: float = 0.0
    #: Latencies of every answer in 2xx, and seconds from the first request to the last
    #: answer: the fallback figures of a machine so busy that no answer ends in the window.
    all_latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def whole_phase(self) -> bool:
        return not self.latencies and bool(self.all_latencies)

    @property
    def cpu_ms(self) -> float:
        """The API's CPU milliseconds per answer (all its processes): what a request costs,
        whatever else the machine runs meanwhile."""
        return self.api_cpu / max(1, self.answered) * 1000

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    @property
    def rate(self) -> float:
        if self.whole_phase:
            return len(self.all_latencies) / self.elapsed
        return self.ok / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.all_latencies if self.whole_phase else self.latencies)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000

    @property
    def bad(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + sum(
            self.errors.values()
        )


async def _drive(
    host: str,
    port: int,
    request: Callable[[], bytes],
    *,
    clients: int,
    warmup: float,
    seconds: float,
    name: str,
) -> Result:
    """``clients`` connections, each sending ``request()`` back to back until time is up."""
    result = Result(name, seconds)
    start = time.perf_counter()
    measure_from, stop = start + warmup, start + warmup + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (t0 := time.perf_counter()) < stop:
                writer.write(request())
                try:
                    status, close = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    if measure_from <= time.perf_counter() <= stop:
                        result.errors[type(exc).__name__] += 1
                    close, status = True, 0
                t1 = time.perf_counter()
                result.answered += bool(status)
                if 200 <= status < 300:
                    result.all_latencies.append(t1 - t0)
                # Counted by when it ended: what the server completed within the window.
                if measure_from <= t1 <= stop:
                    if status:
                        result.statuses[status] += 1
                    if 200 <= status < 300:
                        result.latencies.append(t1 - t0)
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    result.elapsed = time.perf_counter() - start
    return result


def _get(host: str, path: str, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def _png(n: int) -> bytes:
    """A small page image, different for every ``n``."""
    im = Image.new("L", (160, 32), 255)
    ImageDraw.Draw(im).text((4, 8), f"page {n}", fill=0)
    im.putpixel((n % 160, 31), (n // 160) % 256)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _multipart(host: str, n: int, headers: dict[str, str]) -> bytes:
    boundary = f"htrqbench{n:08d}"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="p{n}.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + _png(n)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\n{extra}"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# -- the database, Redis and the API -----------------------------------------------------------


_TICK = os.sysconf("SC_CLK_TCK")


def _group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes of a process group."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # pgrp; utime and stime are fields 14 and 15
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _database(admin_url: str) -> Iterator[tuple[str, str]]:
    """A database for the run: (SQLAlchemy URL, psycopg URL); dropped at the end."""
    name = f"htrq_load_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    plain = f"{admin_url.rsplit('/', 1)[0]}/{name}"
    try:
        yield plain.replace("postgresql://", "postgresql+psycopg://", 1), plain
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _redis() -> Iterator[str]:
    """A Redis server of the bench's own on a free port, without persistence."""
    port = _free_port()
    proc = subprocess.Popen(
        [*("redis-server", "--port", str(port), "--bind", "127.0.0.1"), "--save", ""],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def _api(env: dict[str, str], workers: int) -> Iterator[tuple[str, int, int]]:
    port = _free_port()
    proc = subprocess.Popen(
        [HTRQ, "api", "--port", str(port), "--workers", str(workers), "--loglevel", "warning"],
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.2)
        yield "127.0.0.1", port, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


SEED = """
WITH t AS (SELECT array_agg(id ORDER BY name) AS ids FROM tenants),
ins AS (
    INSERT INTO jobs (id, tenant_id, idempotency_key, fingerprint, external_id, mode,
                      created_at, callback_url, finished_at, completions)
    SELECT gen_random_uuid(), t.ids[1 + g %% array_length(t.ids, 1)], 'seed-' || g,
           md5(g::text) || md5((-g)::text), 'ext-' || g, 'page',
           now() - interval '30 days' + g * interval '1 second',
           CASE WHEN g %% 10 = 0 THEN 'https://dms.example.org/hooks/htrq' END,
           CASE WHEN g %% 20 <> 0 THEN now() - interval '30 days' + g * interval '1 second'
                + interval '40 seconds' END,
           CASE WHEN g %% 20 <> 0 THEN 1 ELSE 0 END
    FROM t, generate_series(%(first)s::int, %(last)s::int) AS g
    RETURNING id, external_id, created_at, finished_at, callback_url
),
pg AS (
    INSERT INTO pages (id, job_id, index, blob_key, frame, filename, status, attempts,
                       attempt_limit, queued_at, error_code, error_message, model, text,
                       confidence, created_at, started_at, finished_at, processing_ms, width,
                       height, read_alone)
    SELECT gen_random_uuid(), ins.id, i, md5(ins.id::text) || md5(i::text), 0,
           'p' || i || '.png',
           CASE WHEN ins.finished_at IS NULL THEN 'queued'
                WHEN i = 2 THEN 'failed' ELSE 'succeeded' END,
           CASE WHEN ins.finished_at IS NULL THEN 0 ELSE 1 END, 3, ins.created_at,
           CASE WHEN ins.finished_at IS NOT NULL AND i = 2 THEN 'invalid_image' END,
           CASE WHEN ins.finished_at IS NOT NULL AND i = 2 THEN 'cannot be decoded' END,
           CASE WHEN ins.finished_at IS NOT NULL THEN 'builtin' END,
           CASE WHEN ins.finished_at IS NOT NULL AND i < 2
                THEN 'Dear Mrs. Stanford,' || chr(10) || 'thank you for your letter' END,
           CASE WHEN ins.finished_at IS NOT NULL AND i < 2 THEN 0.93 END,
           ins.created_at, ins.finished_at, ins.finished_at, 1200, 2480, 3508, false
    FROM ins, generate_series(0, substr(ins.external_id, 5)::int %% 3) AS i
)
INSERT INTO webhook_events (id, job_id, seq, url, payload, status, attempts, next_attempt_at,
                            last_status, created_at, delivered_at)
SELECT gen_random_uuid(), ins.id, 1, ins.callback_url, '{}', 'delivered', 1, ins.finished_at,
       200, ins.finished_at, ins.finished_at
FROM ins WHERE ins.callback_url IS NOT NULL AND ins.finished_at IS NOT NULL
"""


def _seed(conn: psycopg.Connection, first: int, last: int) -> None:
    for i in range(1, TENANTS - 1):
        conn.execute(
            "INSERT INTO tenants (id, name, webhook_secret, created_at) "
            "VALUES (gen_random_uuid(), %s, md5(%s), now()) ON CONFLICT (name) DO NOTHING",
            (f"bench-{i}", str(i)),
        )
    conn.execute(
        "INSERT INTO tenants (id, name, webhook_secret, created_at) "
        "VALUES (gen_random_uuid(), 'default', md5('default'), now()) "
        "ON CONFLICT (name) DO NOTHING"
    )
    step = 20_000
    for lo in range(first, last + 1, step):
        conn.execute(SEED, {"first": lo, "last": min(last, lo + step - 1)})
    conn.execute("ANALYZE")


def _counts(conn: psycopg.Connection) -> tuple[int, int]:
    jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()
    pages = conn.execute("SELECT count(*) FROM pages").fetchone()
    assert jobs and pages
    return int(jobs[0]), int(pages[0])


def _explain(conn: psycopg.Connection, tenant: str) -> str:
    """The plans of what a poll and a list page run (as the service functions issue them)."""
    tid, jid = conn.execute(
        "SELECT j.tenant_id, j.id FROM jobs j JOIN tenants t ON t.id = j.tenant_id "
        "WHERE t.name = %s ORDER BY random() LIMIT 1",
        (tenant,),
    ).fetchone() or (None, None)
    queries: dict[str, tuple[str, dict[str, object]]] = {
        "poll: the job": ("SELECT * FROM jobs WHERE id = %(j)s AND tenant_id = %(t)s", {}),
        "poll: its pages": (
            "SELECT id, index, status, attempts FROM pages WHERE job_id = %(j)s ORDER BY index",
            {},
        ),
        "poll: its webhook": (
            "SELECT * FROM webhook_events WHERE job_id = %(j)s ORDER BY seq DESC LIMIT 1",
            {},
        ),
        "auth: the key": (
            "SELECT tenant_id FROM api_keys WHERE key_hash = md5('x') || md5('y') "
            "AND revoked_at IS NULL LIMIT 1",
            {},
        ),
        "list: newest 50": (
            "SELECT j.*, c.* FROM jobs j JOIN LATERAL (SELECT p.job_id, count(*) AS total, "
            "sum(CASE WHEN p.status = 'queued' THEN 1 ELSE 0 END) AS queued, "
            "max(p.attempts) AS max_attempts FROM pages p WHERE p.job_id = j.id "
            "GROUP BY p.job_id) c ON c.job_id = j.id WHERE j.tenant_id = %(t)s "
            "ORDER BY j.created_at DESC, j.id DESC LIMIT 51",
            {},
        ),
    }
    out = []
    for name, (sql, _) in queries.items():
        rows = conn.execute(
            "EXPLAIN (ANALYZE, COSTS OFF, BUFFERS OFF) " + sql, {"j": jid, "t": tid}
        ).fetchall()
        out.append(f"-- {name}\n" + "\n".join("   " + r[0] for r in rows))
    return "\n".join(out)


def _targets(conn: psycopg.Connection, tenant: str, n: int = 5000) -> list[str]:
    rows = conn.execute(
        "SELECT j.id FROM jobs j JOIN tenants t ON t.id = j.tenant_id WHERE t.name = %s "
        "ORDER BY random() LIMIT %s",
        (tenant, n),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _create_key(env: dict[str, str]) -> str:
    out = subprocess.run(
        [HTRQ, "keys", "create", "--tenant", TENANT, "--label", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


# -- the run -----------------------------------------------------------------------------------


def _phases(
    host: str,
    port: int,
    pid: int,
    *,
    conn: psycopg.Connection,
    tenant: str,
    headers: dict[str, str],
    args: argparse.Namespace,
    label: str,
) -> list[Result]:
    targets = _targets(conn, tenant)
    rnd = random.Random(0)
    polls = [_get(host, f"/v1/jobs/{j}", headers) for j in targets]
    listing = _get(host, "/v1/jobs?limit=50", headers)
    counter = iter(range(10**9))
    submits = [_multipart(host, next(counter), headers) for _ in range(3000)]
    now = conn.execute("SELECT now()").fetchone()
    assert now is not None  # SELECT now() returns one row
    started = now[0]

    def submit() -> bytes:
        n = next(counter)
        return submits[n % len(submits)] if n >= len(submits) else _multipart(host, n, headers)

    def run(name: str, request: Callable[[], bytes], seconds: float) -> Result:
        cpu = _group_cpu(pid)
        result = asyncio.run(
            _drive(
                host,
                port,
                request,
                clients=args.clients,
                warmup=args.warmup,
                seconds=seconds,
                name=f"{label} {name}",
            )
        )
        result.api_cpu = _group_cpu(pid) - cpu
        return result

    results = [
        run("poll", lambda: rnd.choice(polls), args.seconds),
        run("list", lambda: listing, args.seconds / 2),
        run("submit", submit, args.seconds),
    ]
    # Back to the level: the submitted jobs go (pages cascade), and their messages.
    conn.execute("DELETE FROM jobs WHERE created_at >= %s", (started,))
    return results


HEADER = (
    f"{'phase':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU ms':>8} "
    f"{'ans/CPUs':>8} {'non2xx':>6}"
)


def _row(r: Result) -> str:
    name = r.name + (" *" if r.whole_phase else "")
    return (
        f"{name:<34} {r.rate:>8.1f} {r.pct(0.5):>8.1f} {r.pct(0.99):>8.1f} "
        f"{r.pct(1.0):>8.1f} {r.cpu_ms:>8.2f} {1000 / max(r.cpu_ms, 1e-9):>8.0f} {r.bad:>6}"
    )


def main() -> None:
    # A SIGTERM ends the run as Ctrl-C does: the API, Redis and the database are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, nargs="+", default=[1000, 100_000])
    p.add_argument("--api-workers", type=int, nargs="+", default=[1])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--auth", nargs="+", default=["required", "off"])
    p.add_argument("--explain", action="store_true", help="print the poll and list plans")
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = p.parse_args()

    results: dict[tuple[int, int, str], list[Result]] = {}
    with (
        _database(args.admin_url) as (db_url, plain_url),
        _redis() as broker_url,
        tempfile.TemporaryDirectory(prefix="htrq-load-") as tmp,
        psycopg.connect(plain_url, autocommit=True) as conn,
    ):
        base = htrq_free_env()
        base.update(
            HTRQ_DATABASE_URL=db_url,
            HTRQ_BROKER_URL=broker_url,
            HTRQ_STORAGE_DIR=str(Path(tmp) / "blobs"),
            # The API's own cost under load is measured, not the tenant limits' refusals
            # (one tenant makes every request here): bench/noisy_tenant.py measures those.
            HTRQ_TENANT_RATE="0",
            HTRQ_TENANT_HEAVY="0",
        )
        subprocess.run([HTRQ, "migrate"], env=base, check=True, capture_output=True)
        key = _create_key(base)
        seeded = 0
        for level in sorted(args.levels):
            _seed(conn, seeded + 1, level)
            seeded = level
            jobs, pages = _counts(conn)
            print(f"\n== {jobs} jobs, {pages} pages; load average {_loadavg()}", flush=True)
            if args.explain:
                print(_explain(conn, TENANT), flush=True)
            for workers in args.api_workers:
                for auth in args.auth:
                    env = {**base, "HTRQ_AUTH": auth}
                    headers = {"Authorization": f"Bearer {key}"} if auth == "required" else {}
                    tenant = TENANT if auth == "required" else "default"
                    label = f"{level // 1000}k w{workers} auth={auth}"
                    with _api(env, workers) as (host, port, pid):
                        got = _phases(
                            host,
                            port,
                            pid,
                            conn=conn,
                            tenant=tenant,
                            headers=headers,
                            args=args,
                            label=label,
                        )
                    results[(level, workers, auth)] = got
                    for r in got:
                        print(_row(r), flush=True)
        shutil.rmtree(Path(tmp) / "blobs", ignore_errors=True)

    print(
        f"\n{args.clients} concurrent clients, {args.seconds:g} s measured per phase "
        f"(list: {args.seconds / 2:g} s) after {args.warmup:g} s of warm-up; "
        f"{os.cpu_count()} CPUs on this machine, load average {_loadavg()} at the end"
    )
    print("CPU ms: the API's CPU time per answer, all its processes (independent of the load")
    print("of other programs on the machine, which the latencies are not); answers/CPU-s:")
    print("what one core of API CPU answers (1000 / CPU ms, the database's CPU not counted)")
    print("* no answer ended within the measured seconds: req/s and latencies over the whole")
    print("  phase (warm-up and the last answers included)")
    print(HEADER)
    for got in results.values():
        for r in got:
            print(_row(r))
    print()

    def rate(level: int, workers: int, auth: str, phase: int) -> float | None:
        got = results.get((level, workers, auth))
        return got[phase].rate if got else None

    for level in sorted(args.levels):
        for workers in args.api_workers:
            on, off = rate(level, workers, "required", 2), rate(level, workers, "off", 2)
            if on and off:
                print(
                    f"submissions/s auth on : off at {level} jobs, {workers} process(es): "
                    f"{on:.1f} : {off:.1f} = {on / off:.2f}"
                )
            a, b = results.get((level, workers, "required")), results.get((level, workers, "off"))
            if a and b:
                print(
                    f"API CPU ms auth on : off at {level} jobs, {workers} process(es): "
                    f"submit {a[2].cpu_ms:.1f} : {b[2].cpu_ms:.1f} = "
                    f"{a[2].cpu_ms / b[2].cpu_ms:.2f}; "
                    f"poll {a[0].cpu_ms:.1f} : {b[0].cpu_ms:.1f} = {a[0].cpu_ms / b[0].cpu_ms:.2f}"
                )
            pon, poff = rate(level, workers, "required", 0), rate(level, workers, "off", 0)
            if pon and poff:
                print(
                    f"polls/s       auth on : off at {level} jobs, {workers} process(es): "
                    f"{pon:.1f} : {poff:.1f} = {pon / poff:.2f}"
                )
    lo, hi = min(args.levels), max(args.levels)
    if lo != hi:
        for workers in args.api_workers:
            for auth in args.auth:
                a, b = results.get((lo, workers, auth)), results.get((hi, workers, auth))
                if a and b:
                    print(
                        f"poll p99 {hi} : {lo} jobs ({workers} process(es), auth={auth}): "
                        f"{b[0].pct(0.99):.1f} : {a[0].pct(0.99):.1f} ms; "
                        f"submit/s {b[2].rate:.1f} : {a[2].rate:.1f}"
                    )
    if len(args.api_workers) > 1:
        for level in sorted(args.levels):
            for auth in args.auth:
                xs = [results.get((level, w, auth)) for w in args.api_workers]
                if all(xs):
                    print(
                        f"processes {args.api_workers} at {level} jobs, auth={auth}: "
                        f"poll/s {[round(x[0].rate) for x in xs if x]}, "
                        f"poll p99 ms {[round(x[0].pct(0.99), 1) for x in xs if x]}, "
                        f"submit/s {[round(x[2].rate, 1) for x in xs if x]}"
                    )


if __name__ == "__main__":
    main()
