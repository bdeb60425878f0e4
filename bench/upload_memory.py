"""Peak memory of a real ``htrq api`` process while it takes one large multi-file upload.

    .venv/bin/python bench/upload_memory.py                 # 20 files of ~48 MB: ~1 GB
    .venv/bin/python bench/upload_memory.py --files 5

The files are one PNG of noise (4000 x 4000 RGB, which PNG cannot compress) sent under 20
names, streamed by httpx from disk. The API runs with HTRQ_AUTH=off on its own database and
Redis db 14, and its storage in a temporary directory. Printed: the API's resident memory
before, its peak (VmHWM from /proc, the kernel's own high-water mark) and the request's size
and time. Needs PostgreSQL and Redis on localhost (``--admin-url``, ``--broker-url``).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
from PIL import Image
from scratch import htrq_free_env

ROOT = Path(__file__).resolve().parents[1]


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    args = p.parse_args()

    db = f"htrq_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    base = args.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        with tempfile.TemporaryDirectory(prefix="htrq-upload-bench-") as tmp:
            page = Path(tmp) / "noise.png"
            noise = np.random.default_rng(0).integers(0, 256, (4000, 4000, 3), dtype=np.uint8)
            Image.fromarray(noise).save(page, compress_level=1)
            env = htrq_free_env()
            env.update(
                HTRQ_DATABASE_URL=f"{base}/{db}",
                HTRQ_BROKER_URL=args.broker_url,
                HTRQ_STORAGE_DIR=str(Path(tmp) / "blobs"),
                HTRQ_AUTH="off",
            )
            htrq = str(Path(sys.executable).parent / "htrq")
            subprocess.run([htrq, "migrate"], env=env, check=True)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            api = subprocess.Popen(
                [htrq, "api", "--port", str(port), "--loglevel", "warning"], env=env
            )
            url = f"http://127.0.0.1:{port}"
            try:
                for _ in range(100):
                    try:
                        httpx.get(f"{url}/healthz", timeout=1)
                        break
                    except httpx.HTTPError:
                        time.sleep(0.2)
                before = _kib(api.pid, "VmRSS")
                handles = [page.open("rb") for _ in range(args.files)]
                files = [("files", (f"p{i}.png", fh, "image/png")) for i, fh in enumerate(handles)]
                size = page.stat().st_size * args.files
                started = time.perf_counter()
                r = httpx.post(f"{url}/v1/jobs", files=files, timeout=900)
                seconds = time.perf_counter() - started
                for fh in handles:
                    fh.close()
                peak = _kib(api.pid, "VmHWM")
                print(
                    f"upload: {args.files} files, {size / 1e9:.2f} GB, HTTP {r.status_code}, "
                    f"{seconds:.1f} s ({size / 1e6 / seconds:.0f} MB/s)"
                )
                print(f"API resident memory before: {before / 1024:.0f} MiB")
                print(f"API peak resident memory:   {peak / 1024:.0f} MiB (VmHWM)")
            finally:
                api.terminate()
                api.wait(timeout=30)
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
