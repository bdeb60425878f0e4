"""``htrq migrate``: apply the migrations to ``HTRQ_DATABASE_URL`` (registered by
``htrq.cli``)."""

from __future__ import annotations

import argparse
import sys

from htrq.cli import Subparsers, need
from htrq.settings import load_settings


def cmd_migrate(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError

    from migrations import upgrade

    settings = load_settings()
    need(settings, "database_url")
    assert settings.database_url
    try:
        upgrade(settings.database_url, args.revision, secret_key=settings.secret_key)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        print(
            f"htrq: cannot migrate the database at HTRQ_DATABASE_URL ({reason}); create it "
            "first (createdb) and check that the server is running",
            file=sys.stderr,
        )
        return 1
    return 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("migrate", help="apply database migrations")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)
