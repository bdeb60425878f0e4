"""Schemathesis against the live API: every operation in ``/openapi.json`` called with
generated requests, valid and not, through a real ``htrq api`` process with a live key.

Every check schemathesis has runs (``--checks all``): no answer may be a 5xx, every answer
must be one the spec declares (status code, content type, headers, body schema), requests
the spec calls valid must be accepted and those it calls invalid refused. Job routes are
called now with generated ids and now with a real job's id, so that they answer more than
404.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as REGISTRY
from schemathesis.checks import load_all_checks
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import Engine, insert, select, update

from htrq.db import make_sessions
from htrq.models import Job, Line, Page, Tenant, utcnow
from htrq.settings import Settings
from htrq.tenants import create_key
from tests.images import page_png
from tests.services import Processes, service_env

pytestmark = pytest.mark.slow

#: Generated requests per operation: enough to reach every parameter, few enough to run in
#: a minute or two on a busy machine.
MAX_EXAMPLES = 25
load_all_checks()
#: Every check schemathesis has (``--checks all``): besides no 5xx and answers as declared,
#: schema-valid requests accepted (positive_data_acceptance), schema-invalid ones refused
#: (negative_data_rejection), the key required where the spec says (ignored_auth), and the
#: rest. Those of the coverage phase (405 with ``Allow``, a missing required header) run on
#: requests this test does not make: test_submit_contract.py checks 405 and Allow.
CHECKS = REGISTRY.get_all()
#: ignored_auth sends generated Authorization values and expects 401; the key this test
#: configures replaces them on every request, so the check would read the valid key as an
#: invalid one. Keys are tested on their own: every route answers 401 without a live key
#: (test_tenancy.py).
CHECKS = [c for c in CHECKS if getattr(c, "__name__", "") != "ignored_auth"]
#: Operations where one check cannot hold, and why: whether a file is an image is not
#: something a schema says, so a schema-valid submit of random bytes is refused for its
#: content (415 unsupported_format, 422 for a damaged file: docs/errors.md).
#: Likewise a schema-valid model is refused for want of corrected lines (422 too_few_lines):
#: how many lines a tenant has corrected is not something a schema says either.
EXCLUDED = {
    "POST /v1/jobs": [positive_data_acceptance],
    "POST /v1/models": [positive_data_acceptance],
}
TENANT = "schemathesis"


@pytest.fixture
def live_api(
    processes: Processes, database_url: str, broker_url: str, engine: Engine, tmp_path: Path
) -> Iterator[tuple]:
    """The API as deployed (keys required, default settings), a key, and one queued job of
    the key's tenant. No worker: the job stays queued."""
    sessions = make_sessions(engine)
    _, key = create_key(sessions, tenant=TENANT, label="contract test")
    settings = Settings(
        database_url=database_url, broker_url=broker_url, storage_dir=tmp_path / "blobs"
    )
    url = processes.api(service_env(settings))
    headers = {"Authorization": f"Bearer {key}"}
    files = [("files", ("p.png", page_png(), "image/png"))]
    r = httpx.post(f"{url}/v1/jobs", files=files, headers=headers, timeout=60)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    # Read, as a worker would have read it: so that exports, the image and line corrections
    # answer 200 too, not only 409.
    with engine.begin() as conn:
        page_id = conn.execute(
            update(Page)
            .where(Page.job_id == job_id)
            .values(
                status="succeeded",
                attempts=1,
                text="a line of text",
                confidence=0.8,
                width=160,
                height=32,
                model="builtin",
                started_at=utcnow(),
                finished_at=utcnow(),
            )
            .returning(Page.id)
        ).scalar_one()
        conn.execute(
            insert(Line).values(
                page_id=page_id,
                index=0,
                text="a line of text",
                confidence=0.8,
                x0=2,
                y0=4,
                x1=150,
                y1=28,
            )
        )
        conn.execute(update(Job).where(Job.id == job_id).values(finished_at=utcnow()))
    yield url, headers, job_id
    with sessions.begin() as s:
        for t in s.scalars(select(Tenant).where(Tenant.name == TENANT)):
            s.delete(t)


def _sometimes_real_job(strategy: Any, job_id: str) -> Any:
    """Cases whose ``job_id`` is the real job's half of the time (a generated id is a 404).
    Only valid cases: an invalid one keeps what made it invalid (a page index that is not an
    integer, say), which putting the real job's page 0 in would undo."""

    def pick(pair: tuple[Any, bool]) -> Any:
        case, real = pair
        positive = case.meta is None or case.meta.generation.mode.is_positive
        if real and positive and case.path_parameters and "job_id" in case.path_parameters:
            case.path_parameters["job_id"] = job_id
            for name in ("index", "line"):  # its page 0 and that page's line 0
                if name in case.path_parameters:
                    case.path_parameters[name] = 0
        return case

    return st.tuples(strategy, st.booleans()).map(pick)


def _calls(strategy: Any, job_id: str, excluded: list[Any]) -> Any:
    """A Hypothesis test that calls the API with the cases of ``strategy`` and runs every
    check but ``excluded`` on each answer."""

    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,  # the same requests on every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report what failed
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_sometimes_real_job(strategy, job_id))
    def call(case: Any) -> None:
        case.call_and_validate(checks=CHECKS, excluded_checks=excluded, timeout=60)

    return call


def test_every_answer_matches_the_openapi_spec(live_api: tuple) -> None:
    """Generated requests, valid (positive) and invalid (negative), to every operation get
    no 5xx, and every answer's status, content type, headers and body are as declared."""
    url, headers, job_id = live_api
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=60)
    # The key as configuration, not per call: generation then knows the requests carry it,
    # and makes no "missing Authorization" negatives that the key would answer.
    schema.config.update(base_url=url, headers=headers)
    failures: list[str] = []
    operations = 0
    # DELETE last: it removes the real job the other operations use.
    ops = sorted(
        (r.ok() for r in schema.get_all_operations()), key=lambda o: o.method.lower() == "delete"
    )
    for operation, mode in itertools.product(ops, GenerationMode):
        operations += 1
        try:
            strategy = operation.as_strategy(generation_mode=mode)
        except Exception:  # e.g. nothing to make invalid in an operation without inputs
            if mode is GenerationMode.POSITIVE:
                raise
            continue

        call = _calls(strategy, job_id, EXCLUDED.get(operation.label, []))
        try:
            call()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to make invalid
        # Schemathesis raises a group of failures (a BaseExceptionGroup): every operation
        # runs, and all failures are reported together.
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.label} ({mode.value}):\n{exc}")
    assert operations >= 20
    assert not failures, "\n\n".join(failures)
