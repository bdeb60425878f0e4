"""Tenants and their API keys, jobs owned by a tenant, completion webhooks (an outbox), and
the provenance of each page's reading.

Jobs that exist before this revision go to a tenant named ``default``, which is also the
tenant of every request while ``HTRQ_AUTH=off``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 08:00:00.000000
"""

import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("webhook_secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=True),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    default_id = uuid.uuid4()
    op.bulk_insert(
        tenants,
        [
            {
                "id": default_id,
                "name": "default",
                "webhook_secret": secrets.token_hex(32),
                "created_at": datetime.now(UTC),
            }
        ],
    )

    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tenant_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("callback_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("completions", sa.Integer(), nullable=False, server_default="0"))
    op.execute(sa.text("UPDATE jobs SET tenant_id = :t").bindparams(t=default_id))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("tenant_id", existing_type=sa.Uuid(), nullable=False)
        batch.create_foreign_key(
            op.f("fk_jobs_tenant_id_tenants"),
            "tenants",
            ["tenant_id"],
            ["id"],
            ondelete="CASCADE",
        )
        # Idempotency keys (and external ids, which stand in for them) are each tenant's own.
        batch.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        batch.create_unique_constraint(
            op.f("uq_jobs_tenant_id_idempotency_key"), ["tenant_id", "idempotency_key"]
        )
    # The job list: a tenant's jobs newest first, paged by (created_at, id).
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant_id", "created_at", "id"])
    # Retention: finished jobs older than a date.
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    # Deleting a job deletes a stored file only when no other page uses it.
    op.create_index("ix_pages_blob_key", "pages", ["blob_key"])

    with op.batch_alter_table("pages") as batch:
        batch.add_column(sa.Column("model_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("decoding", sa.Text(), nullable=True))
        batch.add_column(sa.Column("htrq_version", sa.String(length=32), nullable=True))

    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name=op.f("ck_webhook_events_status")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_webhook_events_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("job_id", "seq", name=op.f("uq_webhook_events_job_id_seq")),
    )
    op.create_index("ix_webhook_events_due", "webhook_events", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_due", table_name="webhook_events")
    op.drop_table("webhook_events")
    with op.batch_alter_table("pages") as batch:
        batch.drop_column("htrq_version")
        batch.drop_column("decoding")
        batch.drop_column("model_sha256")
    op.drop_index("ix_pages_blob_key", table_name="pages")
    op.drop_index("ix_jobs_finished_at", table_name="jobs")
    op.drop_index("ix_jobs_tenant_created", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_tenant_id_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
        batch.drop_constraint("fk_jobs_tenant_id_tenants", type_="foreignkey")
        batch.drop_column("completions")
        batch.drop_column("finished_at")
        batch.drop_column("callback_url")
        batch.drop_column("tenant_id")
    op.drop_table("api_keys")
    op.drop_table("tenants")
