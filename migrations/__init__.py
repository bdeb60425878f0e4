"""The Alembic migrations of htrq's schema, and how to apply them (:func:`upgrade`).

``migrations/env.py`` runs them on the URL :func:`upgrade` passes in; ``versions/`` holds one
file per revision. ``htrq migrate`` (``migrations/cli.py``) applies them to
``HTRQ_DATABASE_URL``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The folder of ``env.py`` and ``versions/`` (this package's own).
MIGRATIONS_DIR = Path(__file__).parent


def _alembic(url: str, secret_key: str | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not a main option: ConfigParser would choke on "%" in passwords.
    cfg.attributes["database_url"] = url
    # The key webhook secrets are stored under (HTRQ_SECRET_KEY), for revision 0007.
    cfg.attributes["secret_key"] = secret_key
    return cfg


def upgrade(url: str, revision: str = "head", *, secret_key: str | None = None) -> None:
    """Apply the Alembic migrations to ``url`` (both PostgreSQL and SQLite).

    The embedded SQLite database of ``htrq transcribe`` is migrated too, rather than built with
    ``create_all``, so that one schema, constraints included, is what every command runs on.
    """
    from alembic import command

    command.upgrade(_alembic(url, secret_key), revision)


def downgrade(url: str, revision: str, *, secret_key: str | None = None) -> None:
    from alembic import command

    command.downgrade(_alembic(url, secret_key), revision)
