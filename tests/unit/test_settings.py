from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from htrq.settings import Settings, SettingsError, load_settings
from htrq.storage import DirectoryStore, S3Store, open_store


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


def test_storage_url_picks_the_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """file:///path is a directory store there; s3://bucket/prefix an S3 store on that bucket."""
    monkeypatch.setenv("HTRQ_STORAGE_URL", f"file://{tmp_path}/blobs")
    store = open_store(load_settings())
    assert isinstance(store, DirectoryStore) and store.root == tmp_path / "blobs"

    monkeypatch.setenv("HTRQ_STORAGE_URL", "s3://htrq/blobs/v1/")
    monkeypatch.setenv("HTRQ_S3_ENDPOINT_URL", "http://minio:9000")
    s = load_settings()
    assert s.s3_endpoint_url == "http://minio:9000"
    store = open_store(s)
    assert isinstance(store, S3Store) and (store.bucket, store.prefix) == ("htrq", "blobs/v1")
    assert store.object_name("ab" * 32) == f"blobs/v1/ab/ab/{'ab' * 32}"


def test_without_a_storage_url_the_storage_dir_is_the_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Setups that only set HTRQ_STORAGE_DIR keep their directory."""
    monkeypatch.delenv("HTRQ_STORAGE_URL", raising=False)
    monkeypatch.setenv("HTRQ_STORAGE_DIR", str(tmp_path))
    store = open_store(load_settings())
    assert isinstance(store, DirectoryStore) and store.root == tmp_path
    assert isinstance(open_store(load_settings(storage_url=" ")), DirectoryStore)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://host/blobs", "expected file:///absolute/path or s3://bucket/prefix"),
        ("/srv/htrq/blobs", "expected file:///absolute/path or s3://bucket/prefix"),
        ("file://relative/blobs", "absolute path"),
        ("s3:///blobs", "names its bucket"),
        ("s3://bucket/blobs?region=eu", "no query"),
    ],
)
def test_a_bad_storage_url_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    """A storage URL that is not file:// or s3://bucket stops the start, naming the variable."""
    monkeypatch.setenv("HTRQ_STORAGE_URL", url)
    with pytest.raises(SettingsError, match="HTRQ_STORAGE_URL") as err:
        load_settings()
    assert says in str(err.value)


def test_credentials_in_a_url_are_refused_without_repeating_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys written into the storage or endpoint URL are refused, and not echoed back."""
    monkeypatch.setenv("HTRQ_STORAGE_URL", "s3://AKIAEXAMPLE:s3cr3t@htrq/blobs")
    monkeypatch.setenv("HTRQ_S3_ENDPOINT_URL", "http://AKIAEXAMPLE:s3cr3t@minio:9000")
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert "HTRQ_STORAGE_URL" in message and "HTRQ_S3_ENDPOINT_URL" in message
    assert "AWS_ACCESS_KEY_ID" in message
    assert "s3cr3t" not in message and "AKIAEXAMPLE" not in message


def test_a_bad_s3_endpoint_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTRQ_S3_ENDPOINT_URL must be an http(s) URL with a host."""
    monkeypatch.setenv("HTRQ_S3_ENDPOINT_URL", "minio:9000")
    with pytest.raises(SettingsError, match="HTRQ_S3_ENDPOINT_URL='minio:9000'"):
        load_settings()


def test_stretches_are_width_factors(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTRQ_STRETCHES: one reading per width, from 0.5 to 2, at most five, none twice."""
    assert load_settings().stretch_factors == (1.0,)
    monkeypatch.setenv("HTRQ_STRETCHES", " 1, 1.10 ,1.2")
    s = load_settings()
    assert (s.stretches, s.stretch_factors) == ("1,1.1,1.2", (1.0, 1.1, 1.2))
    for bad in ("wide", "1,,1.1", "0.3,1", "1,1", "1,nan", "0.6,0.8,1,1.2,1.4,1.6", ""):
        monkeypatch.setenv("HTRQ_STRETCHES", bad)
        with pytest.raises(SettingsError, match="HTRQ_STRETCHES"):
            load_settings()


def test_every_setting_has_a_row_in_the_settings_table() -> None:
    """The settings table (docs/settings.md) names every Settings field, and nothing that is
    not one."""
    import re

    table = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
    rows: set[str] = set()
    for line in table.read_text().splitlines():
        if line.startswith("| `HTRQ_"):
            rows |= set(re.findall(r"`HTRQ_([A-Z0-9_]+)`", line.split("|")[1]))
    assert rows == {name.upper() for name in Settings.model_fields}


def test_the_default_language_must_be_one_a_job_may_name() -> None:
    """HTRQ_LANGUAGE outside HTRQ_LANGUAGES (and not none) is refused, naming both."""
    with pytest.raises(ValidationError, match="HTRQ_LANGUAGES"):
        Settings(language="de", languages="en,fr")
    assert Settings(language="none").language == "none"
    assert Settings(languages=" en , fr ").allowed_languages == ("en", "fr")
    with pytest.raises(ValidationError, match="always allowed"):
        Settings(languages="en,none")
