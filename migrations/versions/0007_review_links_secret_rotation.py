"""Review links as rows (revocable; only their token's hash kept), and webhook secrets
encrypted at rest with a rotation's previous secret beside them.

The secrets stored so far are encrypted here when ``htrq migrate`` runs with
``HTRQ_SECRET_KEY`` set; otherwise they stay as they are (still read) until
``htrq tenants encrypt-secrets``. Review links given out before this revision were signed
tokens that nothing records; they stop working (ask for new ones).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from htrq.tenants.secretbox import SecretBox, split_keys

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        # A sealed secret is longer than the 128 characters a plain one needed.
        batch.alter_column("webhook_secret", existing_type=sa.String(length=128), type_=sa.Text())
        batch.add_column(sa.Column("webhook_secret_previous", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("webhook_secret_previous_until", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "review_links",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_review_links_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_review_links_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_review_links_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_links")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_review_links_token_hash")),
    )
    op.create_index(op.f("ix_review_links_job_id"), "review_links", ["job_id"])
    op.create_index(op.f("ix_review_links_tenant_id"), "review_links", ["tenant_id"])

    box = SecretBox(split_keys(context.config.attributes.get("secret_key")))
    if box.encrypts:
        conn = op.get_bind()
        rows = conn.execute(sa.text("SELECT id, webhook_secret FROM tenants")).all()
        for tenant_id, stored in rows:
            conn.execute(
                sa.text("UPDATE tenants SET webhook_secret = :s WHERE id = :i"),
                {"s": box.reseal(stored), "i": tenant_id},
            )


def downgrade() -> None:
    box = SecretBox(split_keys(context.config.attributes.get("secret_key")))
    conn = op.get_bind()
    for tenant_id, stored in conn.execute(sa.text("SELECT id, webhook_secret FROM tenants")).all():
        # Back to plain text: the schema before this revision read secrets as they were stored.
        conn.execute(
            sa.text("UPDATE tenants SET webhook_secret = :s WHERE id = :i"),
            {"s": box.open(stored), "i": tenant_id},
        )
    op.drop_index(op.f("ix_review_links_tenant_id"), table_name="review_links")
    op.drop_index(op.f("ix_review_links_job_id"), table_name="review_links")
    op.drop_table("review_links")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("webhook_secret_previous_until")
        batch.drop_column("webhook_secret_previous")
        batch.alter_column("webhook_secret", existing_type=sa.Text(), type_=sa.String(length=128))
