"""``htrq``: run the API or a worker, migrate, submit and inspect jobs, transcribe files.

Each command is registered by a small function; modules listed in :data:`EXTENSIONS` may add
more (training and evaluation live with the worker, so that this module never imports torch).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from htrq.errors import PageError
from htrq.settings import Settings, SettingsError, load_settings
from htrq.storage import StorageUnavailable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from htrq.resources import PageResource

#: Modules with a ``register(subparsers)`` function that add commands when installed.
EXTENSIONS = ("worker.training.cli",)

Command = Callable[[argparse.Namespace], int]


def _need(settings: Settings, *names: str) -> None:
    missing = [f"HTRQ_{n.upper()}" for n in names if not getattr(settings, n)]
    if missing:
        raise SettingsError(f"{', '.join(missing)} must be set for this command")


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _progress(message: str) -> None:
    print(f"htrq: {message}", file=sys.stderr, flush=True)


# -- api, worker, migrate ---------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app

    settings = load_settings()
    _need(settings, "database_url", "broker_url")
    if args.workers > 1:
        # Several processes need an import string; each reads the same environment.
        uvicorn.run(
            "api.main:create_app",
            factory=True,
            workers=args.workers,
            host=args.host,
            port=args.port,
            log_level=args.loglevel,
        )
    else:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.loglevel)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from htrq.queue import worker_queues
    from worker.metrics_server import serve_worker_metrics

    overrides = {"worker_concurrency": args.concurrency} if args.concurrency else {}
    settings = load_settings(**overrides)
    _need(settings, "database_url", "broker_url")
    # Its model's queue and the legacy one; each tenant's is added as the worker finds it.
    queues = ",".join(worker_queues(settings))
    argv = ["worker", f"--loglevel={args.loglevel}", f"--queues={queues}"]
    argv += [f"--pool={args.pool}", f"--concurrency={settings.worker_concurrency}"]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    with serve_worker_metrics(settings):
        # Imported only now: prometheus_client must find its multiprocess directory set.
        from worker.app import create_app

        create_app(settings).worker_main(argv)
    from worker.app import model_failed

    # A worker that stopped because its model would not load must not look like a clean exit
    # to a supervisor (systemd, compose restart policies).
    return 1 if model_failed.value else 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError

    from htrq.db import upgrade

    settings = load_settings()
    _need(settings, "database_url")
    assert settings.database_url
    try:
        upgrade(settings.database_url, args.revision)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        print(
            f"htrq: cannot migrate the database at HTRQ_DATABASE_URL ({reason}); create it "
            "first (createdb) and check that the server is running",
            file=sys.stderr,
        )
        return 1
    return 0


# -- keys and tenants (on the database) -------------------------------------------------------


@contextmanager
def _database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    from htrq.db import make_engine, make_sessions

    _need(settings, "database_url")
    assert settings.database_url
    engine = make_engine(settings.database_url)
    try:
        yield make_sessions(engine)
    finally:
        engine.dispose()


def cmd_keys_create(args: argparse.Namespace) -> int:
    from htrq.tenants import create_key

    with _database(load_settings()) as sessions:
        info, key = create_key(sessions, tenant=args.tenant, label=args.label)
    _progress(f"key {info.id} for tenant {info.tenant!r}; it is shown once, keep it safe")
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from htrq.tenants import list_keys

    with _database(load_settings()) as sessions:
        keys = list_keys(sessions)
    for k in keys:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "live"
        print(f"{k.id}  {k.tenant}  {k.prefix}…  {state}  {k.label or ''}".rstrip())
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from htrq.tenants import revoke_key

    with _database(load_settings()) as sessions:
        if not revoke_key(sessions, args.id):
            print(f"htrq: no key {args.id}", file=sys.stderr)
            return 1
    _progress(f"key {args.id} revoked")
    return 0


def cmd_tenant_secret(args: argparse.Namespace) -> int:
    from htrq.tenants import UnknownTenant, webhook_secret

    with _database(load_settings()) as sessions:
        try:
            print(webhook_secret(sessions, args.name))
        except UnknownTenant as exc:
            print(f"htrq: {exc}", file=sys.stderr)
            return 1
    return 0


def cmd_corrections_export(args: argparse.Namespace) -> int:
    from htrq.storage import open_store
    from htrq.tenants import UnknownTenant

    # The worker's image code (OpenCV): crops are cut exactly as the worker cut them.
    from worker.corrections import export_corrections

    settings = load_settings()
    with _database(settings) as sessions:
        try:
            report = export_corrections(
                sessions=sessions,
                storage=open_store(settings),
                settings=settings,
                out=args.out,
                tenant=args.tenant,
                since=args.since,
            )
        except UnknownTenant as exc:
            print(f"htrq: {exc}", file=sys.stderr)
            return 1
    for problem in report.skipped:
        _progress(f"skipped {problem}")
    empty = f", {report.empty} empty left out" if report.empty else ""
    _progress(f"{report.lines} lines of {report.pages} pages in {report.jobs} jobs{empty}")
    print(report.path)
    return 0


def _since(text: str) -> datetime:
    """An ISO date or time (UTC unless it says otherwise)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date such as 2026-12-01 or 2026-12-01T14:00: {text!r}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# -- submit, status (over HTTP) ---------------------------------------------------------------


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from htrq.client import Client

    return Client(args.url, args.key)


def cmd_submit(args: argparse.Namespace) -> int:
    from htrq.client import ApiError

    try:
        with _client(args) as client:
            job = client.submit(
                args.files,
                mode=args.mode,
                external_id=args.external_id,
                callback_url=args.callback_url,
                idempotency_key=args.idempotency_key,
                model=args.model,
            )
            _progress(f"job {job.id}: {len(job.pages)} pages")
            if not args.wait:
                _print_json(job.model_dump(mode="json"))
                return 0
            job = client.wait(job.id, interval=args.poll)
            if args.format == "json":
                _print_json(job.model_dump(mode="json"))
            else:
                body = client.export(job.id, args.format)
                if args.output:
                    args.output.write_bytes(body)
                else:
                    sys.stdout.write(body.decode() + ("" if body.endswith(b"\n") else "\n"))
    except ApiError as exc:
        print(f"htrq: {exc}", file=sys.stderr)
        return 2
    _progress(f"job {job.id} {job.status}")
    return 0 if job.status == "succeeded" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from htrq.client import ApiError

    try:
        with _client(args) as client:
            job = client.get(args.job)
            out = job.model_dump(mode="json")
            if args.pages:
                out["pages"] = [p.model_dump(mode="json") for p in client.pages(job.id)]
    except ApiError as exc:
        print(f"htrq: {exc}", file=sys.stderr)
        return 1
    _print_json(out)
    return 0


# -- transcribe -------------------------------------------------------------------------------


def cmd_transcribe(args: argparse.Namespace) -> int:
    from worker.embedded import transcribe

    xml = args.format in ("alto", "page")
    if xml and not args.output and len(args.files) > 1:
        # Checked before the model runs; one file of several pages is only known after.
        print(f"htrq: {NEEDS_ZIP}", file=sys.stderr)
        return 2
    if not args.verbose:
        # Each failure is printed with its page below; the worker's tracebacks are noise here.
        logging.getLogger("worker.batch").setLevel(logging.CRITICAL)
    pages = transcribe(args.files, settings=load_settings(), mode=args.mode, progress=_progress)
    if args.format == "text":
        body = "".join(_text_entry(p) for p in pages).encode()
    elif args.format == "json":
        pages_json = [p.model_dump(mode="json") for p in pages]
        body = json.dumps(pages_json, indent=2, ensure_ascii=False).encode() + b"\n"
    else:
        from htrq.exports import from_resource, render_job_export, render_page_export

        results = [from_resource(p.model_dump(mode="json")) for p in pages]
        if xml and len(results) == 1:
            body = render_page_export(results[0], args.format)
        elif xml and not args.output:
            print(f"htrq: {NEEDS_ZIP}", file=sys.stderr)
            return 2
        else:
            body = render_job_export(results, args.format)[0]
    if args.output:
        args.output.write_bytes(body)
    else:
        sys.stdout.write(body.decode() + ("" if body.endswith(b"\n") else "\n"))
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


# -- parser -----------------------------------------------------------------------------------


def _register_core(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("api", help="serve the HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a Celery worker that transcribes queued pages")
    p.add_argument("--concurrency", type=int, help="processes (default HTRQ_WORKER_CONCURRENCY)")
    p.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    p.add_argument("--loglevel", default="info")
    p.add_argument("--hostname", help="Celery node name")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("migrate", help="apply database migrations")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    def api_access(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url",
            default=os.environ.get("HTRQ_API_URL", "http://127.0.0.1:8000"),
            help="the API's address (HTRQ_API_URL; default http://127.0.0.1:8000)",
        )
        p.add_argument(
            "--key", default=os.environ.get("HTRQ_API_KEY"), help="API key (HTRQ_API_KEY)"
        )

    p = sub.add_parser("submit", help="submit files as a job to the API (over HTTP)")
    p.add_argument("files", nargs="+", type=Path)
    api_access(p)
    p.add_argument(
        "--wait", action="store_true", help="wait until the job has finished and print it"
    )
    p.add_argument(
        "--format",
        default="txt",
        choices=["txt", "json", "alto", "page", "pdf"],
        help="with --wait: what to print (txt: the text; json: the job; alto, page: zips and "
        "pdf need -o)",
    )
    p.add_argument("-o", "--output", type=Path, help="with --wait: write the export here")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--external-id")
    p.add_argument("--idempotency-key", help="default: a new one, reused by retries")
    p.add_argument("--model", help="one of the server's HTRQ_MODELS (default: its default)")
    p.add_argument("--callback-url", help="where to POST a signed event when the job finishes")
    p.add_argument("--mode", default="page", choices=["page", "line"])
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="print a job's status (over HTTP)")
    p.add_argument("job")
    api_access(p)
    p.add_argument("--pages", action="store_true", help="include each page's result")
    p.set_defaults(func=cmd_status)

    keys = sub.add_parser("keys", help="API keys (on the database)")
    ks = keys.add_subparsers(dest="keys_command", required=True)
    p = ks.add_parser("create", help="make a key; prints it as the last line (shown once)")
    p.add_argument("--tenant", required=True, help="its tenant (made if new)")
    p.add_argument("--label", help="what the key is for")
    p.set_defaults(func=cmd_keys_create)
    p = ks.add_parser("list", help="every key: id, tenant, prefix, state, label")
    p.set_defaults(func=cmd_keys_list)
    p = ks.add_parser("revoke", help="revoke a key by its id")
    p.add_argument("id")
    p.set_defaults(func=cmd_keys_revoke)

    tenants = sub.add_parser("tenants", help="tenants (on the database)")
    ts = tenants.add_subparsers(dest="tenants_command", required=True)
    p = ts.add_parser("secret", help="print the tenant's webhook signing secret")
    p.add_argument("name")
    p.set_defaults(func=cmd_tenant_secret)

    corrections = sub.add_parser("corrections", help="people's corrections (on the database)")
    cs = corrections.add_subparsers(dest="corrections_command", required=True)
    p = cs.add_parser(
        "export",
        help="write the corrected and reviewed lines as crops and lines.tsv, for htrq train "
        "--lines OUT (needs the worker extra); prints the lines.tsv path",
    )
    p.add_argument("out", type=Path, help="folder for the crops and lines.tsv (made if new)")
    p.add_argument("--tenant", help="only this tenant's jobs (default: every tenant's)")
    p.add_argument(
        "--since", type=_since, help="only lines checked at or after this date or time (UTC)"
    )
    p.set_defaults(func=cmd_corrections_export)

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htrq", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    _register_core(sub)
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # `htrq status JOB | head`: a closed pipe ends the command quietly, as for any Unix tool.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"htrq: {exc}", file=sys.stderr)
        return 2
    except PageError as exc:
        print(f"htrq: refused: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except StorageUnavailable as exc:
        print(f"htrq: {exc}; see HTRQ_STORAGE_URL", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
