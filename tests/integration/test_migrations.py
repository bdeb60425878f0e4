from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from htrq.db import make_engine
from htrq.models import Base
from migrations import downgrade, upgrade


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_head_matches_the_models(engine: Engine) -> None:
    """The migrations build exactly the schema the models declare (nothing to autogenerate)."""
    assert _diff(engine) == []


def test_head_has_the_constraints_against_duplicates(engine: Engine) -> None:
    """UNIQUE(page_id, index), UNIQUE(job_id, index), UNIQUE(tenant_id, idempotency_key) and
    UNIQUE(job_id, seq) of webhook events exist."""
    insp = inspect(engine)
    uniques = {
        t: {tuple(u["column_names"]) for u in insp.get_unique_constraints(t)}
        for t in ("jobs", "pages", "lines", "webhook_events", "api_keys")
    }
    assert ("tenant_id", "idempotency_key") in uniques["jobs"]
    assert ("job_id", "seq") in uniques["webhook_events"]
    assert ("key_hash",) in uniques["api_keys"]
    assert ("job_id", "index") in uniques["pages"]
    assert ("page_id", "index") in uniques["lines"]


def test_downgrade_to_base_and_up_again(scratch_pg_url: str) -> None:
    """Every migration can be undone and reapplied on PostgreSQL (on a database of its own,
    never the one the other tests share)."""
    upgrade(scratch_pg_url)
    downgrade(scratch_pg_url, "base")
    assert _tables(scratch_pg_url) == {"alembic_version"}
    upgrade(scratch_pg_url)
    assert {"jobs", "pages", "lines", "tenants", "api_keys", "webhook_events"} <= _tables(
        scratch_pg_url
    )


def test_the_same_migrations_build_the_embedded_sqlite_schema(tmp_path: Path) -> None:
    """htrq transcribe's SQLite database comes from the same revisions, matching the models."""
    url = f"sqlite:///{tmp_path / 'htrq.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    assert _diff(engine) == []
    engine.dispose()
