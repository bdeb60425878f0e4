"""``htrq api``: serve the HTTP API with uvicorn (registered by ``htrq.cli``)."""

from __future__ import annotations

import argparse
from typing import Any

from htrq.cli import Subparsers, need
from htrq.settings import load_settings


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from api.server import GuardedHttpProtocol, configure

    settings = load_settings()
    need(settings, "database_url", "broker_url")
    # The deadlines on what clients send (api/server.py) and uvicorn's own bounds: an idle
    # kept-alive connection closes after 5 s, headers are at most 64 KiB.
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.loglevel,
        "http": GuardedHttpProtocol,
        "timeout_keep_alive": 5,
        "h11_max_incomplete_event_size": 64 * 1024,
    }
    if args.workers > 1:
        # Several processes need an import string; each reads the same environment.
        uvicorn.run("api.main:create_app", factory=True, workers=args.workers, **options)
    else:
        configure(settings)
        uvicorn.run(create_app(settings), **options)
    return 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("api", help="serve the HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_api)
