#!/usr/bin/env python3
"""Write docs/settings.md, the one settings table, from ``htrq.settings.Settings``.

Each row comes from the class itself: the field's name, its ``HTRQ_*`` variable, its default
and its ``#:`` comment. Two things the class cannot say are kept here, keyed by field, and
must name every field (the script stops otherwise): which processes read the setting
(decided from where the code reads it) and, for some, a note on how to choose a value.
Measured figures stay out of both: they belong on the benchmarks page or the model card.

    .venv/bin/python scripts/settings_table.py          # rewrite docs/settings.md
    .venv/bin/python scripts/settings_table.py --check  # exit 1 if it is not current

tests/unit/test_settings_table.py runs the check, so a field added to Settings without a row
here (or a changed default or comment) fails the tests until the page is written again.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "settings.md"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from htrq.settings import ENV_PREFIX, Settings  # noqa: E402

API, WORKER = "api", "worker"
#: The commands other than the two servers that read a setting: `htrq migrate`, `keys`,
#: `tenants` (the database only) and `htrq corrections export` (database, storage and the
#: crop settings). `htrq transcribe` runs the API's submit and the worker's batch in one
#: process and so reads every setting of both; it is not named row by row.
CLI = "CLI"
ALL = "all"
#: `htrq trainer`, which trains tenant models (POST /v1/models).
TRAINER = "trainer"

#: Which processes read each setting. "api": `htrq api` (request handling, submit and
#: retry); "worker": `htrq worker` (its batch task, sweeper, webhook sender, metrics port).
READERS: dict[str, str] = {
    "database_url": ALL,
    "broker_url": f"{API}, {WORKER}",
    "storage_url": f"{API}, {WORKER}, {CLI}",
    "storage_dir": f"{API}, {WORKER}, {CLI}",
    "s3_endpoint_url": f"{API}, {WORKER}, {CLI}",
    "auth": API,
    "api_db_pool": API,
    "api_threads": API,
    "max_request_bytes": API,
    "api_header_seconds": API,
    "api_body_min_rate": API,
    "tenant_rate": API,
    "tenant_burst": API,
    "tenant_heavy": API,
    "tenant_slot_seconds": API,
    "webhook_backoff": WORKER,
    "webhook_backoff_max": WORKER,
    "webhook_max_attempts": WORKER,
    "webhook_timeout": WORKER,
    "webhook_concurrency": WORKER,
    "webhook_tenant_concurrency": WORKER,
    "webhook_allow_private": f"{API}, {WORKER}",
    "webhook_allow_networks": f"{API}, {WORKER}",
    "webhook_poll": WORKER,
    "secret_key": f"{API}, {WORKER}, {CLI}",
    "review_link_seconds": API,
    "public_url": API,
    "retention_days": WORKER,
    "model": f"{API}, {WORKER}",
    "models": API,
    "fair_share": f"{API}, {WORKER}",
    "queue_refresh": WORKER,
    "device": WORKER,
    "dtype": WORKER,
    "quantize": WORKER,
    "stretches": WORKER,
    "batch_size": WORKER,
    "num_beams": WORKER,
    "ctc_weight": WORKER,
    "word_boxes": WORKER,
    # The API stores a job's language (the default when it names none) and checks it against
    # the list; the worker reads each job's stored language, and loads every listed lexicon.
    "language": f"{API}, {WORKER}",
    "languages": f"{API}, {WORKER}",
    "word_weight": WORKER,
    "word_floor": WORKER,
    "max_new_tokens": WORKER,
    "review_below": API,
    "lease_seconds": WORKER,
    "max_attempts": API,
    "flush_every": WORKER,
    "flush_interval": WORKER,
    "worker_concurrency": WORKER,
    "torch_threads": WORKER,
    "worker_metrics_port": WORKER,
    "worker_metrics_addr": WORKER,
    "sweep_interval": WORKER,
    "queued_grace_seconds": WORKER,
    "retry_backoff": WORKER,
    "retry_backoff_max": WORKER,
    "max_pixels": f"{API}, {WORKER}, {CLI}",
    "max_upload_bytes": API,
    "max_pages_per_job": API,
    "max_aspect": f"{API}, {WORKER}, {CLI}",
    "max_lines_per_page": WORKER,
    "group_time_limit": WORKER,
    "pdf_render_seconds": f"{API}, {WORKER}",
    "pdf_renderers": API,
    "pdf_dpi": f"{API}, {WORKER}, {CLI}",
    "line_margin": f"{WORKER}, {CLI}",
    "segmenter": WORKER,
    "train_min_lines": f"{API}, {TRAINER}",
    "train_steps": API,
    "train_epochs": API,
    "train_max_steps": API,
    "train_batch_size": API,
    "train_lr": API,
    "trainer_threads": TRAINER,
    "train_lease_seconds": TRAINER,
    "train_max_attempts": TRAINER,
    "train_checkpoint_every": TRAINER,
    "model_cache": WORKER,
}

#: What the ``#:`` comment does not say: where a process reads it in a way a reader would not
#: guess, and how to choose a value. No measured figures here.
NOTES: dict[str, str] = {
    "database_url": "`htrq api`, `worker`, `migrate`, `keys`, `tenants` and `corrections "
    "export` refuse to start without it.",
    "broker_url": "`htrq api` and `htrq worker` refuse to start without it.",
    "storage_url": "The API and every worker must name the same store "
    "([Operations: blob storage](operations.md#blob-storage)).",
    "s3_endpoint_url": "Credentials are not HTRQ settings: boto3 reads `AWS_ACCESS_KEY_ID`, "
    "`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION` (or a profile or role).",
    "webhook_allow_private": "The API checks a callback URL at submit; the worker checks it "
    "again at each delivery, and connects only to the addresses it checked "
    "([API guide: webhooks](api.md#webhooks)).",
    "webhook_allow_networks": "Checked like `HTRQ_WEBHOOK_ALLOW_PRIVATE`, by the API at "
    "submit and the worker at each delivery; an IPv6 address that carries an IPv4 one (NAT64, "
    "6to4, Teredo, IPv4-mapped) is judged by the IPv4 address.",
    "webhook_timeout": "One deadline for the whole attempt (connect, send, answer), not per "
    "read; at most a few KB of the answer's body are read.",
    "model": "A worker loads it and takes only its queue; the API sends a job that names no "
    "model to it. A hub id such as `microsoft/trocr-base-handwritten` needs a machine that "
    "reaches the hub ([The model](model.md#other-trocr-checkpoints)).",
    "models": "[Per-model queues](operations.md#per-model-queues).",
    "fair_share": "It chooses the queue a page is sent to (API: submit and retry; worker: "
    "re-sends) and the queues a worker consumes: set it the same on the API and the workers "
    "([Fair share](operations.md#fair-share-between-tenants)).",
    "dtype": "On a CPU, where half precision is slower, the worker reads in `float32` and "
    "logs a warning.",
    "quantize": "Refused on a GPU. The figures: "
    "[benchmarks](benchmarks.md#settings-that-trade-speed-for-accuracy).",
    "stretches": "At most 5 factors from 0.5 to 2. With `1,1.1,1.2` raise `HTRQ_REVIEW_BELOW` "
    "to 0.8 (the likeliest of three readings is more confident). Models with a square input "
    "(stock TrOCR) read once whatever it says. The figures: "
    "[benchmarks](benchmarks.md#settings-that-trade-speed-for-accuracy).",
    "batch_size": "Halved automatically on CUDA out-of-memory.",
    "ctc_weight": "Models without a head (`microsoft/trocr-*`) decode with the decoder alone.",
    "review_below": "Read by the API when it answers pages, lines and exports (and by "
    "`htrq transcribe`), not by the worker: changing it re-flags pages already read. For "
    "another model pick its own with `htrq eval --review-sweep 0.6,0.7,0.8,0.9`.",
    "lease_seconds": "The broker's visibility timeout is derived from it (with "
    "`HTRQ_RETRY_BACKOFF_MAX`) by every Celery client, the API's included.",
    "max_attempts": "Read by the API, not the worker: submit gives each page its attempt "
    "limit, and `POST /v1/jobs/{id}/retry` gives it this many more; the worker compares a "
    "page's attempts with the limit stored on it. Setting it on a worker changes nothing.",
    "flush_every": "A group should hold several `generate()` batches of lines: 16 pages of "
    "about 25 lines is plenty in `page` mode; for one-line pages (`mode=line`) use about "
    "8 x `HTRQ_BATCH_SIZE` ([benchmarks](benchmarks.md#service-throughput)). A smaller value "
    "shortens another tenant's wait behind a backlog and costs throughput.",
    "worker_concurrency": "`htrq worker --concurrency N` overrides it. Processes against "
    "threads on a CPU host: the "
    "[benchmarks](benchmarks.md#settings-that-trade-speed-for-accuracy).",
    "worker_metrics_port": "A port already in use stops the worker at start with status 2.",
    "retry_backoff": "Also the first delay of a worker whose claims keep failing (database "
    "down), doubling up to `HTRQ_RETRY_BACKOFF_MAX`.",
    "max_upload_bytes": "413 `too_large`.",
    "max_request_bytes": "413 `request_too_large`, from `Content-Length` before the body is "
    "read, or as soon as a streamed body passes it.",
    "api_header_seconds": "A reverse proxy in front usually bounds this itself "
    "([Operations: behind a reverse proxy](operations.md#behind-a-reverse-proxy)).",
    "tenant_rate": "Counted per tenant over every API process, in the broker's Redis; "
    "with `HTRQ_AUTH=off` every request is the one `default` tenant's "
    "([Operations: tenant limits](operations.md#tenant-limits)).",
    "tenant_heavy": "A request refused here stores nothing; a slot is given back when its "
    "request ends ([Operations: tenant limits](operations.md#tenant-limits)).",
    "max_pages_per_job": "413 `too_many_pages`; frames of a multi-page TIFF are counted no "
    "further than this.",
    "max_pixels": "`too_large`, from the header (or the PDF page size at `HTRQ_PDF_DPI`).",
    "max_aspect": "`extreme_aspect`.",
    "pdf_render_seconds": "Rendered in a child process, so that a page past the limit can be "
    "stopped: the worker's own helper, and in the API the `HTRQ_PDF_RENDERERS` processes, "
    "where it also bounds the wait for a free one.",
    "pdf_renderers": "Read by the API (and `htrq transcribe`, at submit); each worker process "
    "has one render helper of its own.",
    "api_db_pool": "Size PostgreSQL's `max_connections` for API processes x this + workers.",
    "secret_key": "The workers decrypt with it to sign; the API and `htrq keys create` "
    "encrypt new tenants' secrets; `htrq tenants secret`, `rotate-secret` and "
    "`encrypt-secrets` and `htrq migrate` (which encrypts the secrets stored before it) use it "
    "too. Never shown in an error message.",
    "public_url": "Set it where the API sits behind a reverse proxy "
    "([Operations](operations.md#behind-a-reverse-proxy)).",
}


def comments(cls: type) -> dict[str, str]:
    """Each field's ``#:`` comment in the class body, joined into one paragraph."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    out: dict[str, str] = {}
    (node,) = ast.parse(source).body
    assert isinstance(node, ast.ClassDef)
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            parts: list[str] = []
            i = stmt.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#:"):
                parts.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            out[stmt.target.id] = " ".join(parts)
    return out


def markdown(text: str) -> str:
    """reStructuredText's inline markup in the comments, as Markdown, safe in a table cell."""
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    text = re.sub(r":(?:class|func|data|mod):`([^`]+)`", r"`\1`", text)
    return text.replace("|", "\\|")


def default(name: str) -> str:
    value = Settings.model_fields[name].default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str | Path):
        return f"`{value}`"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


def render() -> str:
    fields = list(Settings.model_fields)
    for table, what in ((READERS, "READERS"), (NOTES, "NOTES")):
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise SystemExit(f"{what} names fields Settings does not have: {unknown}")
    missing = [f for f in fields if f not in READERS]
    if missing:
        raise SystemExit(f"say which processes read these new settings in READERS: {missing}")
    said = comments(Settings)
    undocumented = [f for f in fields if not said.get(f)]
    if undocumented:
        raise SystemExit(f"give these fields a #: comment in Settings: {undocumented}")
    rows = [
        "| variable | field | default | read by | what it does |",
        "|---|---|---|---|---|",
    ]
    for f in fields:
        text = markdown(said[f])
        if f in NOTES:
            text += " " + markdown(NOTES[f])
        rows.append(f"| `{ENV_PREFIX}{f.upper()}` | `{f}` | {default(f)} | {READERS[f]} | {text} |")
    return HEADER + "\n".join(rows) + "\n"


HEADER = """\
# Settings

<!-- Written by scripts/settings_table.py from htrq.settings.Settings; do not edit by hand.
     tests/unit/test_settings_table.py fails when this page is not current. -->

Every setting is an environment variable with the prefix `HTRQ_`, read once when a process
starts and passed in from there; a wrong value stops the process with a message naming the
variable. In tests and scripts, build `Settings(field=...)` instead of setting the
environment.

**Read by** says which processes read the setting, as the code reads it:

- **api**: `htrq api` (its routes, submit, retry, review links, exports);
- **worker**: `htrq worker` (its batch task, sweeper, webhook sender and metrics port);
- **CLI**: `htrq corrections export` (database, storage and the settings it cuts line crops
  with); `htrq migrate`, `keys` and `tenants` read only `HTRQ_DATABASE_URL`;
- **all**: every one of these.

`htrq transcribe` runs the API's submit and the worker's batch in one process and reads the
settings of both (with no `HTRQ_DATABASE_URL` or `HTRQ_BROKER_URL` it uses SQLite and an
in-process queue). `htrq submit` and `htrq status` read only `HTRQ_API_URL` and
`HTRQ_API_KEY`, the defaults of their `--url` and `--key` options, not settings. `htrq train`,
`eval`, `synth`, `average` and `enlarge-input` read none: they take options.

A setting read by one process has no effect on the others: set the API's settings on the
API and the worker's on the workers. Settings read by both (`HTRQ_MODEL`,
`HTRQ_FAIR_SHARE`, the storage) must agree between them.

"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
