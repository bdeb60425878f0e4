"""Tenant models: a tenant's own model, trained on its corrections; the job that a tenant
model reads and the page it read; webhook events about a model.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATES = "status IN ('queued', 'training', 'ready', 'failed', 'cancelled')"


def upgrade() -> None:
    op.create_table(
        "tenant_models",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=48), nullable=False),
        sa.Column("base", sa.String(length=64), nullable=False),
        sa.Column("base_sha256", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("lines_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("recipe", sa.Text(), nullable=False),
        sa.Column("train_lines", sa.Integer(), nullable=True),
        sa.Column("heldout_lines", sa.Integer(), nullable=True),
        sa.Column("heldout_jobs", sa.Integer(), nullable=True),
        sa.Column("base_cer", sa.Float(), nullable=True),
        sa.Column("cer", sa.Float(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checkpoint_key", sa.String(length=128), nullable=True),
        sa.Column("artifact_key", sa.String(length=128), nullable=True),
        sa.Column("model_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_STATES, name=op.f("ck_tenant_models_status")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_models_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_models")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_tenant_models_tenant_id_name")),
    )
    op.create_index("ix_tenant_models_status_lease", "tenant_models", ["status", "lease_until"])
    # Nullable columns: PostgreSQL adds them without rewriting the tables.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tenant_model_id", sa.Uuid(), nullable=True))
    with op.batch_alter_table("pages") as batch:
        batch.add_column(sa.Column("model_id", sa.Uuid(), nullable=True))
    with op.batch_alter_table("webhook_events") as batch:
        batch.alter_column("job_id", existing_type=sa.Uuid(), nullable=True)
        batch.add_column(sa.Column("model_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_webhook_events_model_id_tenant_models"),
            "tenant_models",
            ["model_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index("ix_webhook_events_model_id", ["model_id"])
        batch.create_check_constraint(
            op.f("ck_webhook_events_one_subject"), "(job_id IS NULL) <> (model_id IS NULL)"
        )


def downgrade() -> None:
    op.execute("DELETE FROM webhook_events WHERE job_id IS NULL")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_constraint(op.f("ck_webhook_events_one_subject"), type_="check")
        batch.drop_index("ix_webhook_events_model_id")
        batch.drop_constraint(op.f("fk_webhook_events_model_id_tenant_models"), type_="foreignkey")
        batch.drop_column("model_id")
        batch.alter_column("job_id", existing_type=sa.Uuid(), nullable=False)
    with op.batch_alter_table("pages") as batch:
        batch.drop_column("model_id")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("tenant_model_id")
    op.drop_index("ix_tenant_models_status_lease", table_name="tenant_models")
    op.drop_table("tenant_models")
