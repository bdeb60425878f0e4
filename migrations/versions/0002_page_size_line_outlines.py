"""Page image size, and line polygons and baselines (whole-page segmentation).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 07:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns without defaults: PostgreSQL adds them without rewriting the tables.
    with op.batch_alter_table("pages") as batch:
        batch.add_column(sa.Column("width", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("height", sa.Integer(), nullable=True))
    with op.batch_alter_table("lines") as batch:
        batch.add_column(sa.Column("polygon", sa.Text(), nullable=True))
        batch.add_column(sa.Column("baseline", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lines") as batch:
        batch.drop_column("baseline")
        batch.drop_column("polygon")
    with op.batch_alter_table("pages") as batch:
        batch.drop_column("height")
        batch.drop_column("width")
