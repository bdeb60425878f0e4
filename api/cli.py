"""``htrq api``: serve the HTTP API with uvicorn (registered by ``htrq.cli``)."""

from __future__ import annotations

import argparse

from htrq.cli import Subparsers, need
from htrq.settings import load_settings


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app

    settings = load_settings()
    need(settings, "database_url", "broker_url")
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


def register(sub: Subparsers) -> None:
    p = sub.add_parser("api", help="serve the HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_api)
