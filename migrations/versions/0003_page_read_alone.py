"""Pages to be read alone: a group that ran past its time limit puts its pages back so.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 07:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL 11+ adds the column without rewriting the table.
    with op.batch_alter_table("pages") as batch:
        batch.add_column(
            sa.Column("read_alone", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("pages") as batch:
        batch.drop_column("read_alone")
