"""Reuse: a page's reading key, the page it waits for, where its copied reading came from;
a job's choice to be read afresh.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns and a constant default: PostgreSQL adds them without rewriting a table.
    with op.batch_alter_table("pages") as batch:
        batch.add_column(sa.Column("reading_key", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("waiting_on", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("reused_from_job", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("reused_from_page", sa.Integer(), nullable=True))
        batch.create_index("ix_pages_reading_key", ["reading_key"])
        batch.create_index(
            "ix_pages_waiting_on",
            ["waiting_on"],
            postgresql_where=sa.text("waiting_on IS NOT NULL"),
            sqlite_where=sa.text("waiting_on IS NOT NULL"),
        )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("reuse", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reuse")
    with op.batch_alter_table("pages") as batch:
        batch.drop_index("ix_pages_waiting_on")
        batch.drop_index("ix_pages_reading_key")
        batch.drop_column("reused_from_page")
        batch.drop_column("reused_from_job")
        batch.drop_column("waiting_on")
        batch.drop_column("reading_key")
