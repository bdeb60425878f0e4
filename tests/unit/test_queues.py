"""Queue names: per model, per tenant, and where a batch's re-sends go."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

import pytest

from htrq.queue import LEGACY_QUEUE, model_queue, model_slug, page_queue, worker_queues
from htrq.settings import Settings, SettingsError, load_settings
from worker.serving.queues import SendBack

TENANT = uuid.UUID("6f1c1d1e-0000-4000-8000-000000000001")


def test_a_model_s_queue_name_is_safe_and_tells_models_apart() -> None:
    """``builtin`` keeps its name; a path or hub id becomes its last part and a digest, so
    two models whose names end alike still get two queues."""
    assert model_queue("builtin") == "htrq.builtin"
    hub = model_slug("microsoft/trocr-base-handwritten")
    assert (
        hub.startswith("trocr-base-handwritten-") and len(hub) == len("trocr-base-handwritten-") + 8
    )
    a, b = model_slug("/models/a/best"), model_slug("/models/b/best")
    assert a != b and a.startswith("best-") and b.startswith("best-")
    for name in ("/tmp/x y/ünïcode model/", "a:b", "../..", "x" * 300):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", model_slug(name)), name
    assert model_slug("/models/a/best/") == model_slug("/models/a/best/")  # stable


def test_a_page_goes_to_its_tenant_s_queue_of_its_model_or_the_model_s_without_fair_share() -> None:
    """Fair share: ``htrq.<model>.<tenant>``; off: ``htrq.<model>``; no model: the default."""
    s = Settings(model="builtin")
    assert page_queue(s, model=None, tenant_id=TENANT) == f"htrq.builtin.{TENANT.hex}"
    assert page_queue(s, model="/m/ft", tenant_id=TENANT) == f"{model_queue('/m/ft')}.{TENANT.hex}"
    fifo = s.model_copy(update={"fair_share": False})
    assert page_queue(fifo, model=None, tenant_id=TENANT) == "htrq.builtin"
    assert worker_queues(s, [TENANT]) == [
        "htrq.builtin",
        LEGACY_QUEUE,
        f"htrq.builtin.{TENANT.hex}",
    ]
    assert worker_queues(fifo, [TENANT]) == ["htrq.builtin", LEGACY_QUEUE]


def test_allowed_models_are_the_default_and_the_listed_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTRQ_MODELS is comma-separated, spaces trimmed; HTRQ_MODEL is always allowed."""
    assert Settings().allowed_models == ("builtin",)
    monkeypatch.setenv("HTRQ_MODELS", " /models/ft , builtin,hub/id")
    assert load_settings().allowed_models == ("builtin", "/models/ft", "hub/id")
    monkeypatch.setenv("HTRQ_MODELS", "a,,b")
    with pytest.raises(SettingsError, match="HTRQ_MODELS"):
        load_settings()


def test_a_batch_s_re_sends_go_back_to_the_queue_each_page_came_from() -> None:
    """Pages of two tenants in one group go back to their own queues; a page of unknown
    origin to the model's queue; an explicit queue wins."""
    sent: list[tuple[list[str], float, str | None]] = []

    def send(page_ids: Sequence[str], countdown: float = 0, *, queue: str | None = None) -> None:
        sent.append((list(page_ids), countdown, queue))

    back = SendBack(send, {"p1": "htrq.m.a", "p2": "htrq.m.b", "p3": "htrq.m.a"}, "htrq.m")
    back(["p1", "p2", "p3", "p4"], 5)
    assert sorted(sent) == [
        (["p1", "p3"], 5, "htrq.m.a"),
        (["p2"], 5, "htrq.m.b"),
        (["p4"], 5, "htrq.m"),
    ]
    sent.clear()
    back(["p1"], 0, queue="elsewhere")
    assert sent == [(["p1"], 0, "elsewhere")]
