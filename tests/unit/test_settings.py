from __future__ import annotations

import pytest

from htrq.settings import Settings, SettingsError, load_settings


def test_environment_values_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTRQ_* variables set the matching fields."""
    monkeypatch.setenv("HTRQ_BATCH_SIZE", "32")
    monkeypatch.setenv("HTRQ_DEVICE", "cuda:1")
    s = load_settings()
    assert (s.batch_size, s.device) == (32, "cuda:1")


def test_a_wrong_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value fails at start with a message naming the environment variable."""
    monkeypatch.setenv("HTRQ_BATCH_SIZE", "many")
    monkeypatch.setenv("HTRQ_DEVICE", "gpu")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "HTRQ_BATCH_SIZE='many'" in str(err.value)
    assert "HTRQ_DEVICE='gpu'" in str(err.value)


def test_prefetch_holds_two_groups_per_process() -> None:
    """Prefetch lets a full group wait while another runs, whatever the concurrency."""
    for every, conc in [(16, 1), (16, 3), (1, 4)]:
        s = Settings(flush_every=every, worker_concurrency=conc)
        assert s.prefetch_multiplier * conc >= 2 * every


def test_visibility_timeout_follows_the_lease() -> None:
    """A crashed worker's messages come back after a small multiple of the lease, not an hour."""
    assert Settings(lease_seconds=60, retry_backoff_max=10).visibility_timeout == 130
    assert Settings(lease_seconds=600).visibility_timeout < 3600


def test_blank_urls_mean_unset() -> None:
    """An empty HTRQ_DATABASE_URL selects the embedded defaults like an unset one."""
    assert Settings(database_url=" ", broker_url="").database_url is None


def test_torch_threads_share_the_cores_among_worker_processes() -> None:
    """Two processes on 8 cores get 4 threads each; an explicit value wins; never 0."""
    assert load_settings(worker_concurrency=2).threads_per_process(8) == 4
    assert load_settings(worker_concurrency=3).threads_per_process(2) == 1
    assert load_settings(worker_concurrency=2, torch_threads=6).threads_per_process(8) == 6
