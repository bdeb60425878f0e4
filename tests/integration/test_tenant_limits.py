"""Per-tenant limits (``htrq.tenants.limits``) across two real ``htrq api`` processes that
share one Redis: a tenant's rate and its heavy slots are one limit however many processes
answer it, another tenant is answered meanwhile, and a slot of a killed process frees."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import Engine, select

from htrq.db import make_sessions
from htrq.models import Tenant
from htrq.settings import Settings
from htrq.tenants import create_key
from tests.images import page_png
from tests.services import Processes, service_env, wait_for

pytestmark = pytest.mark.slow


def _keys(engine: Engine, *tenants: str) -> dict[str, str]:
    sessions = make_sessions(engine)
    return {t: create_key(sessions, tenant=t, label="limits test")[1] for t in tenants}


def _tenant_id(engine: Engine, name: str) -> uuid.UUID:
    with make_sessions(engine)() as s:
        return s.scalars(select(Tenant.id).where(Tenant.name == name)).one()


@pytest.fixture
def cleanup_tenants(engine: Engine):
    names: list[str] = []
    yield names
    with make_sessions(engine).begin() as s:
        for t in s.scalars(select(Tenant).where(Tenant.name.in_(names))):
            s.delete(t)


def _settings(database_url: str, broker_url: str, tmp_path: Path, **limits: object) -> Settings:
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        storage_dir=tmp_path / "blobs",
        **limits,  # type: ignore[arg-type]
    )


def test_two_api_processes_enforce_one_rate_per_tenant(
    processes: Processes,
    database_url: str,
    broker_url: str,
    engine: Engine,
    tmp_path: Path,
    cleanup_tenants: list[str],
) -> None:
    """Tenant A's 16 requests spread over two API processes get exactly its burst of 5
    answered (one token per 1,000 s: none comes back during the test), the rest 429
    rate_limited with Retry-After; tenant B is answered throughout."""
    cleanup_tenants += ["limits-a", "limits-b"]
    keys = _keys(engine, "limits-a", "limits-b")
    env = service_env(
        _settings(database_url, broker_url, tmp_path, tenant_rate=0.001, tenant_burst=5)
    )
    urls = [processes.api(env, name="api-1"), processes.api(env, name="api-2")]
    a = {"Authorization": f"Bearer {keys['limits-a']}"}
    b = {"Authorization": f"Bearer {keys['limits-b']}"}
    answers = [httpx.get(f"{urls[i % 2]}/v1/jobs", headers=a, timeout=30) for i in range(16)]
    assert [r.status_code for r in answers].count(200) == 5
    refused = [r for r in answers if r.status_code == 429]
    assert len(refused) == 11
    assert {r.json()["error"]["code"] for r in refused} == {"rate_limited"}
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    # Refused on both processes: the limit is one, not one per process.
    assert {str(r.url).rsplit("/v1", 1)[0] for r in refused} == set(urls)
    assert all(httpx.get(f"{u}/v1/jobs", headers=b, timeout=30).status_code == 200 for u in urls)
    metrics = httpx.get(f"{urls[0]}/metrics", timeout=30).text
    assert 'htrq_tenant_refusals_total{code="rate_limited"} 11.0' in metrics


def _hold_upload(url: str, key: str) -> socket.socket:
    """A submit whose body is still on its way: the headers and a first part sent, the rest
    never (the API holds the tenant's slot while it waits)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        "POST /v1/jobs HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"Authorization: Bearer {key}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        "Content-Length: 100000\r\n\r\n"
        "--xyz\r\n"
        'Content-Disposition: form-data; name="files"; filename="p.png"\r\n\r\n'
    )
    sock.sendall(head.encode())
    return sock


def _submit(url: str, key: str) -> httpx.Response:
    files = [("files", ("p.png", page_png(str(uuid.uuid4())), "image/png"))]
    return httpx.post(
        f"{url}/v1/jobs", files=files, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def test_heavy_slots_are_shared_by_the_processes_and_a_killed_ones_expire(
    processes: Processes,
    database_url: str,
    broker_url: str,
    engine: Engine,
    tmp_path: Path,
    cleanup_tenants: list[str],
) -> None:
    """With one heavy slot per tenant: A's upload in progress on one process makes A's
    submit on the other 429 too_many_concurrent with Retry-After, while B's is answered
    201; when that process is killed mid-upload its slot stops counting at its expiry, and
    A is answered again."""
    cleanup_tenants += ["heavy-a", "heavy-b"]
    keys = _keys(engine, "heavy-a", "heavy-b")
    settings = _settings(
        database_url,
        broker_url,
        tmp_path,
        tenant_heavy=1,
        tenant_slot_seconds=20,
        api_body_min_rate=0,  # the held upload sends nothing more
    )
    env = service_env(settings)
    url_1 = processes.api(env, name="api-1")
    proc_1 = processes.procs[-1]
    url_2 = processes.api(env, name="api-2")
    slots = redis.Redis.from_url(broker_url)
    key = f"htrq:limits:heavy:{_tenant_id(engine, 'heavy-a')}"

    held = _hold_upload(url_1, keys["heavy-a"])
    wait_for(lambda: slots.zcard(key) == 1, "the held upload to take A's slot")
    refused = _submit(url_2, keys["heavy-a"])
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_concurrent"
    assert int(refused.headers["Retry-After"]) >= 1
    assert _submit(url_2, keys["heavy-b"]).status_code == 201

    processes.kill(proc_1)  # SIGKILL: the slot is never given back
    held.close()
    assert _submit(url_2, keys["heavy-a"]).status_code == 429  # still counted...
    answered: list[int] = []

    def a_answered() -> bool:
        answered.append(_submit(url_2, keys["heavy-a"]).status_code)
        return answered[-1] == 201

    wait_for(a_answered, "A's slot to expire", interval=2)  # ...until its expiry
    assert set(answered) <= {201, 429}


def test_the_python_client_waits_out_the_tenant_s_rate(
    processes: Processes,
    database_url: str,
    broker_url: str,
    engine: Engine,
    tmp_path: Path,
    cleanup_tenants: list[str],
) -> None:
    """A DMS looping over PATCHes or polls faster than its rate gets 429 with Retry-After;
    the client waits that long and sends again, so every call of a burst of 8 succeeds
    (burst 2, two tokens a second), and the API counted the refusals it waited out."""
    from htrq.client import Client

    cleanup_tenants.append("limits-client")
    key = _keys(engine, "limits-client")["limits-client"]
    env = service_env(_settings(database_url, broker_url, tmp_path, tenant_rate=2, tenant_burst=2))
    url = processes.api(env)
    with Client(url, api_key=key, timeout=30) as htrq:
        listed = [htrq.list() for _ in range(8)]
    assert all(page.jobs == [] for page in listed)
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    refused = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('htrq_tenant_refusals_total{code="rate_limited"}')
    ]
    assert refused and refused[0] >= 1
