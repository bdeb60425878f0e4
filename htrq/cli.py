"""``htrq``: run the API or a worker, migrate, submit and inspect jobs, transcribe files.

Here: ``keys``, ``tenants``, ``submit`` and ``status``. The other commands (``api``,
``worker``, ``transcribe``, ``migrate``, ``train``, ``eval``, ``corrections``...) live with the
packages they run. Each command is registered by a small function. A package adds its own with a
``register(subparsers)`` function named under the ``htrq.commands`` entry points
(pyproject.toml), so that this module imports neither the API nor the worker, and a package
that is not installed (the API image has no worker) simply adds nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from htrq.errors import PageError
from htrq.settings import Settings, SettingsError, load_settings
from htrq.storage import StorageUnavailable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from htrq.client import Client

#: The entry-point group whose ``register(subparsers)`` functions add commands.
COMMANDS_GROUP = "htrq.commands"

Command = Callable[[argparse.Namespace], int]
#: What a ``register`` function adds its commands to (argparse's class is not generic at run time).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def need(settings: Settings, *names: str) -> None:
    """Raise :class:`SettingsError` naming each of the settings ``names`` that is unset."""
    missing = [f"HTRQ_{n.upper()}" for n in names if not getattr(settings, n)]
    if missing:
        raise SettingsError(f"{', '.join(missing)} must be set for this command")


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def progress(message: str) -> None:
    print(f"htrq: {message}", file=sys.stderr, flush=True)


def write_output(body: bytes, output: Path | None) -> None:
    """``body`` into ``output``, or onto stdout as text ending in a newline."""
    if output:
        output.write_bytes(body)
    else:
        sys.stdout.write(body.decode() + ("" if body.endswith(b"\n") else "\n"))


@contextmanager
def database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on ``HTRQ_DATABASE_URL`` for one command; the engine is closed afterwards."""
    from htrq.db import make_engine, make_sessions

    need(settings, "database_url")
    assert settings.database_url
    engine = make_engine(settings.database_url)
    try:
        yield make_sessions(engine)
    finally:
        engine.dispose()


# -- keys and tenants (on the database) -------------------------------------------------------


def cmd_keys_create(args: argparse.Namespace) -> int:
    from htrq.tenants import create_key
    from htrq.tenants.secretbox import SecretBox

    settings = load_settings()
    with database(settings) as sessions:
        box = SecretBox.of(settings.secret_key)
        info, key = create_key(sessions, tenant=args.tenant, label=args.label, box=box)
    progress(f"key {info.id} for tenant {info.tenant!r}; it is shown once, keep it safe")
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from htrq.tenants import list_keys

    with database(load_settings()) as sessions:
        keys = list_keys(sessions)
    for k in keys:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "live"
        print(f"{k.id}  {k.tenant}  {k.prefix}…  {state}  {k.label or ''}".rstrip())
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from htrq.tenants import revoke_key

    with database(load_settings()) as sessions:
        if not revoke_key(sessions, args.id):
            print(f"htrq: no key {args.id}", file=sys.stderr)
            return 1
    progress(f"key {args.id} revoked")
    return 0


def cmd_tenant_secret(args: argparse.Namespace) -> int:
    from htrq.tenants import UnknownTenant, webhook_secret
    from htrq.tenants.secretbox import SecretBox, SecretKeyMissing

    settings = load_settings()
    with database(settings) as sessions:
        try:
            print(webhook_secret(sessions, args.name, box=SecretBox.of(settings.secret_key)))
        except (UnknownTenant, SecretKeyMissing) as exc:
            print(f"htrq: {exc}", file=sys.stderr)
            return 1
    return 0


def cmd_tenant_rotate_secret(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from htrq.tenants import UnknownTenant, rotate_secret
    from htrq.tenants.secretbox import SecretBox, SecretKeyMissing

    settings = load_settings()
    if args.overlap_hours < 0:
        print("htrq: --overlap-hours cannot be negative", file=sys.stderr)
        return 2
    with database(settings) as sessions:
        try:
            rotated = rotate_secret(
                sessions,
                args.name,
                box=SecretBox.of(settings.secret_key),
                overlap=timedelta(hours=args.overlap_hours),
            )
        except (UnknownTenant, SecretKeyMissing) as exc:
            print(f"htrq: {exc}", file=sys.stderr)
            return 1
    progress(
        f"new webhook secret for {args.name!r}; the old one signs beside it until "
        f"{rotated.previous_until:%Y-%m-%d %H:%M} UTC"
    )
    print(rotated.secret)
    return 0


def cmd_tenant_encrypt_secrets(args: argparse.Namespace) -> int:
    from htrq.tenants import encrypt_secrets
    from htrq.tenants.secretbox import SecretBox, SecretKeyMissing

    settings = load_settings()
    with database(settings) as sessions:
        try:
            n = encrypt_secrets(sessions, box=SecretBox.of(settings.secret_key))
        except (ValueError, SecretKeyMissing) as exc:
            print(f"htrq: {exc}", file=sys.stderr)
            return 1
    progress(f"{n} tenants' webhook secrets stored under the first key of HTRQ_SECRET_KEY")
    return 0


def cmd_tenant_revoke_links(args: argparse.Namespace) -> int:
    from htrq.tenants import UnknownTenant, tenant_id
    from htrq.tenants.review_links import revoke_links

    with database(load_settings()) as sessions:
        try:
            n = revoke_links(sessions, tenant_id=tenant_id(sessions, args.name))
        except UnknownTenant as exc:
            print(f"htrq: {exc}", file=sys.stderr)
            return 1
    progress(f"{n} review links of {args.name!r} revoked")
    return 0


# -- submit, status (over HTTP) ---------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    from htrq.client import Client

    return Client(args.url, args.key)


#: ``--format`` values whose export is a binary file (a zip, a PDF): written with ``-o`` only.
BINARY_FORMATS = ("alto", "page", "pdf")


def cmd_submit(args: argparse.Namespace) -> int:
    import httpx

    from htrq.client import ApiError

    # Checked before anything is sent: a job made only to find out afterwards that its
    # result cannot be printed, or a file missing, wastes the reading.
    if args.wait and args.format in BINARY_FORMATS and args.output is None:
        print(f"htrq: --format {args.format} writes a file: give it -o FILE", file=sys.stderr)
        return 2
    for f in args.files:
        if not f.is_file():
            print(f"htrq: {f}: no such file", file=sys.stderr)
            return 2
    try:
        with _client(args) as client:
            job = client.submit(
                args.files,
                mode=args.mode,
                external_id=args.external_id,
                callback_url=args.callback_url,
                idempotency_key=args.idempotency_key,
                model=args.model,
                language=args.language,
                reuse=not args.no_reuse,
            )
            progress(f"job {job.id}: {len(job.pages)} pages")
            if not args.wait:
                print_json(job.model_dump(mode="json"))
                return 0
            job = client.wait(job.id, interval=args.poll)
            if args.format == "json":
                print_json(job.model_dump(mode="json"))
            else:
                write_output(client.export(job.id, args.format), args.output)
    except ApiError as exc:
        print(f"htrq: {exc}", file=sys.stderr)
        return 2
    except httpx.TransportError as exc:
        print(f"htrq: cannot reach the API at {args.url}: {exc}", file=sys.stderr)
        return 1
    progress(f"job {job.id} {job.status}")
    return 0 if job.status == "succeeded" else 1


def cmd_status(args: argparse.Namespace) -> int:
    import httpx

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
    except httpx.TransportError as exc:
        print(f"htrq: cannot reach the API at {args.url}: {exc}", file=sys.stderr)
        return 1
    print_json(out)
    return 0


# -- parser -----------------------------------------------------------------------------------


def _api_access(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("HTRQ_API_URL", "http://127.0.0.1:8000"),
        help="the API's address (HTRQ_API_URL; default http://127.0.0.1:8000)",
    )
    p.add_argument("--key", default=os.environ.get("HTRQ_API_KEY"), help="API key (HTRQ_API_KEY)")


def _register_submit(sub: Subparsers) -> None:
    p = sub.add_parser("submit", help="submit files as a job to the API (over HTTP)")
    p.add_argument("files", nargs="+", type=Path)
    _api_access(p)
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
    p.add_argument(
        "--model",
        help="one of the server's HTRQ_MODELS, or the name of one of your models "
        "(POST /v1/models; default: the server's default)",
    )
    p.add_argument(
        "--language",
        help="the pages' language, one of the server's HTRQ_LANGUAGES or none (default: its "
        "default)",
    )
    p.add_argument(
        "--no-reuse",
        action="store_true",
        help="read every page afresh, even one this tenant already had read with the same "
        "model and settings (whose reading is otherwise copied)",
    )
    p.add_argument("--callback-url", help="where to POST a signed event when the job finishes")
    p.add_argument("--mode", default="page", choices=["page", "line"])
    p.set_defaults(func=cmd_submit)


def _register_status(sub: Subparsers) -> None:
    p = sub.add_parser("status", help="print a job's status (over HTTP)")
    p.add_argument("job")
    _api_access(p)
    p.add_argument("--pages", action="store_true", help="include each page's result")
    p.set_defaults(func=cmd_status)


def _register_keys(sub: Subparsers) -> None:
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


def _register_tenants(sub: Subparsers) -> None:
    tenants = sub.add_parser("tenants", help="tenants (on the database)")
    ts = tenants.add_subparsers(dest="tenants_command", required=True)
    p = ts.add_parser("secret", help="print the tenant's webhook signing secret")
    p.add_argument("name")
    p.set_defaults(func=cmd_tenant_secret)
    p = ts.add_parser(
        "rotate-secret",
        help="give the tenant a new webhook secret; the old one keeps signing beside it for "
        "--overlap-hours (two v1 signatures per webhook)",
    )
    p.add_argument("name")
    p.add_argument("--overlap-hours", type=float, default=24.0)
    p.set_defaults(func=cmd_tenant_rotate_secret)
    p = ts.add_parser(
        "encrypt-secrets",
        help="store every tenant's webhook secret under the first key of HTRQ_SECRET_KEY",
    )
    p.set_defaults(func=cmd_tenant_encrypt_secrets)
    p = ts.add_parser("revoke-links", help="revoke every review link of the tenant")
    p.add_argument("name")
    p.set_defaults(func=cmd_tenant_revoke_links)


def _register_plugins(sub: Subparsers) -> None:
    """The commands other packages register (``htrq.commands`` entry points), by name."""
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name):
        try:
            register = ep.load()
        except ModuleNotFoundError as exc:
            # That package is not installed here (the API image has no worker): no commands.
            if exc.name and ep.module.startswith(exc.name):
                continue
            raise
        register(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htrq", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in (_register_submit, _register_status, _register_keys, _register_tenants):
        register(sub)
    _register_plugins(sub)
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
