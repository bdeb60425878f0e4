"""Words: each line's words with their boxes and confidences, and where the boxes come from.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: PostgreSQL adds them without rewriting the table. Lines stored
    # before keep NULL and are served with estimated words (htrq.words.served_words).
    with op.batch_alter_table("lines") as batch:
        batch.add_column(
            sa.Column("words", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"))
        )
        batch.add_column(sa.Column("box_source", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lines") as batch:
        batch.drop_column("box_source")
        batch.drop_column("words")
