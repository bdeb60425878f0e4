"""``htrq worker`` (the Celery worker) and ``htrq transcribe`` (the service path in one
process), registered by ``htrq.cli``. Nothing heavy is imported until a command runs:
``htrq worker`` must set prometheus_client's multiprocess directory up first."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from htrq.cli import Subparsers, need, progress, write_output
from htrq.settings import load_settings

if TYPE_CHECKING:
    from htrq.resources import PageResource


def cmd_worker(args: argparse.Namespace) -> int:
    from htrq.queue import worker_queues
    from worker.serving.metrics_server import serve_worker_metrics

    overrides = {"worker_concurrency": args.concurrency} if args.concurrency else {}
    settings = load_settings(**overrides)
    need(settings, "database_url", "broker_url")
    # Its model's queue and the legacy one; each tenant's is added as the worker finds it.
    queues = ",".join(worker_queues(settings))
    argv = ["worker", f"--loglevel={args.loglevel}", f"--queues={queues}"]
    argv += [f"--pool={args.pool}", f"--concurrency={settings.worker_concurrency}"]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    with serve_worker_metrics(settings):
        # Imported only now: prometheus_client must find its multiprocess directory set.
        from worker.serving.app import create_app

        create_app(settings).worker_main(argv)
    from worker.serving.app import model_failed

    # A worker that stopped because its model would not load must not look like a clean exit
    # to a supervisor (systemd, compose restart policies).
    return 1 if model_failed.value else 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from worker.serving.embedded import transcribe

    xml = args.format in ("alto", "page")
    if xml and not args.output and len(args.files) > 1:
        # Checked before the model runs; one file of several pages is only known after.
        print(f"htrq: {NEEDS_ZIP}", file=sys.stderr)
        return 2
    if not args.verbose:
        # Each failure is printed with its page below; the worker's tracebacks are noise here.
        logging.getLogger("worker.serving.batch").setLevel(logging.CRITICAL)
    pages = transcribe(args.files, settings=load_settings(), mode=args.mode, progress=progress)
    if args.format == "text":
        body = "".join(_text_entry(p) for p in pages).encode()
    elif args.format == "json":
        pages_json = [p.model_dump(mode="json") for p in pages]
        body = json.dumps(pages_json, indent=2, ensure_ascii=False).encode() + b"\n"
    else:
        from htrq.exports.formats import from_resource, render_job_export, render_page_export

        results = [from_resource(p.model_dump(mode="json")) for p in pages]
        if xml and len(results) == 1:
            body = render_page_export(results[0], args.format)
        elif xml and not args.output:
            print(f"htrq: {NEEDS_ZIP}", file=sys.stderr)
            return 2
        else:
            body = render_job_export(results, args.format)[0]
    write_output(body, args.output)
    return 0 if all(p.status == "succeeded" for p in pages) else 1


#: Several pages of ALTO or PAGE XML are a zip (one file per page), which is not for a terminal.
NEEDS_ZIP = "several pages in ALTO or PAGE XML make a zip: add --output FILE.zip"


def _text_entry(p: PageResource) -> str:
    where = f"{p.filename} page {p.frame + 1}" if p.frame else p.filename
    if p.error:
        return f"## {where}: failed: {p.error.code}: {p.error.message}\n\n"
    conf = f"{p.confidence:.3f}" if p.confidence is not None else "n/a"
    review = f", {p.lines_to_review} of {len(p.lines)} lines to review" if p.lines_to_review else ""
    return f"## {where} (confidence {conf}{review})\n{p.text}\n\n"


def register(sub: Subparsers) -> None:
    p = sub.add_parser("worker", help="run a Celery worker that transcribes queued pages")
    p.add_argument("--concurrency", type=int, help="processes (default HTRQ_WORKER_CONCURRENCY)")
    p.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    p.add_argument("--loglevel", default="info")
    p.add_argument("--hostname", help="Celery node name")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("transcribe", help="transcribe files in this process and print the text")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument(
        "--format",
        default="text",
        choices=["text", "json", "txt", "alto", "page"],
        help="text: a readable summary; json: the API's page resources; txt, alto, page: the "
        "exports (txt: a form feed between pages; alto, page: the XML of a single page, or a "
        "zip of one XML file per page, which needs -o)",
    )
    p.add_argument(
        "-o", "--output", type=Path, help="write the output to this file instead of stdout"
    )
    p.add_argument("--mode", default="page", choices=["page", "line"])
    p.set_defaults(func=cmd_transcribe)
