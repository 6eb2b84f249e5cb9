"""The `portability` command end to end, against the embedded PostgreSQL and SeaweedFS."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers.accounts import BAD_ACCOUNT, BAD_CONTACT_EMAIL
from tests.helpers.archive_checks import (
    check_counts_and_isolation,
    check_no_secrets,
    check_round_trip,
    check_standard_tools,
    jsonl,
    unpack,
)
from tests.helpers.commands import portability_cli

pytestmark = pytest.mark.e2e
ALL_FORMATS = ["csv", "jsonl", "parquet"]


def download(url: str, target) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    target.write_bytes(data)
    return data


@pytest.fixture(scope="module")
def eu_export(seeded, tmp_path_factory):
    """One export of the EU account in every format, downloaded through its link."""
    result = portability_cli("export", "--account", "e2e-00002", "--formats", ",".join(ALL_FORMATS), "--json")
    summary = json.loads(result.stdout)
    folder = tmp_path_factory.mktemp("eu-export")
    data = download(summary["url"], folder / "archive.zip")
    return {"summary": summary, "stderr": result.stderr, "zip": folder / "archive.zip",
            "root": unpack(folder / "archive.zip", folder), "bytes": data}


def test_json_output_describes_the_archive(eu_export):
    summary = eu_export["summary"]
    assert set(summary) >= {"export_id", "account_id", "bucket", "key", "bytes", "sha256", "url", "expires_at",
                            "counts"}
    assert summary["account_id"] == "e2e-00002"
    assert summary["bucket"] == "exports-eu"  # an EU account's archive stays in the EU bucket
    assert summary["bytes"] == len(eu_export["bytes"])
    assert summary["sha256"] == hashlib.sha256(eu_export["bytes"]).hexdigest()
    assert "X-Amz-Signature" not in eu_export["stderr"]


def test_archive_holds_exactly_this_accounts_records(eu_export, db):
    manifest = check_counts_and_isolation(eu_export["root"], "e2e-00002", db)
    assert all(entry["source_count"] > 0 for entry in manifest["contents"].values())
    assert manifest["formats"] == ALL_FORMATS


def test_values_round_trip_exactly(eu_export, db):
    check_round_trip(eu_export["root"], "e2e-00002", db, ALL_FORMATS)


def test_no_planted_secret_anywhere(eu_export, db):
    assert check_no_secrets(eu_export["root"], db) >= 3 * 10


def test_bag_and_data_package_validate_with_standard_tools(eu_export):
    check_standard_tools(eu_export["root"])


def test_verify_command_accepts_the_archive_and_its_link(eu_export):
    by_path = portability_cli("verify", str(eu_export["zip"]), "--json")
    report = json.loads(by_path.stdout)
    assert report["export_id"] == eu_export["summary"]["export_id"]
    assert report["records_checked"] > 0
    by_link = portability_cli("verify", eu_export["summary"]["url"])
    assert by_link.stdout.startswith("OK")


def test_verify_command_rejects_a_tampered_archive(eu_export, tmp_path):
    import zipfile

    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(eu_export["zip"]) as source, zipfile.ZipFile(tampered, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data/contacts.jsonl"):
                at = data.index(b'"email":"') + len(b'"email":"')
                data = data[:at] + (b"y" if data[at:at + 1] == b"x" else b"x") + data[at + 1:]  # same length
            target.writestr(item, data)
    result = portability_cli("verify", str(tampered), check=False)
    assert result.returncode == 2
    assert "contacts.jsonl" in result.stderr


def test_fresh_link_from_link_command_downloads_the_same_archive(eu_export, tmp_path):
    export_id = eu_export["summary"]["export_id"]
    result = portability_cli("link", export_id, "--expires-in-hours", "1")
    url = result.stdout.strip()
    assert url.startswith("http") and url != eu_export["summary"]["url"]
    assert download(url, tmp_path / "again.zip") == eu_export["bytes"]


def test_link_is_refused_after_it_expires(eu_export, store_env):
    from portability.pipeline import export

    store, summary = export.find_archive(eu_export["summary"]["export_id"])
    link = export.presigned_link(store, summary.bucket, summary.key, seconds=2)
    with urllib.request.urlopen(link.url, timeout=30) as response:
        assert response.status == 200
    time.sleep(4)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(link.url, timeout=30)
    assert refused.value.code == 403


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--account", "e2e-00001'; DROP TABLE contacts;--"], "account_id"),
        (["--account", "e2e-00001", "--categories", "contacts,passwords"], "categories"),
        (["--account", "e2e-00001", "--formats", "xml"], "formats"),
        (["--account", "e2e-00001", "--expires-in-hours", "0"], "expires_in_hours"),
        (["--account", "e2e-00001", "--expires-in-hours", "169"], "expires_in_hours"),
        (["--account", "../../etc/passwd"], "account_id"),
    ],
)
def test_bad_requests_are_refused_before_any_source_read(seeded, args, field):
    # The source points at a closed port: any attempt to read it would fail differently.
    unreachable = json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": 9, "login": "nobody"})
    result = portability_cli("export", *args, env={"AIRFLOW_CONN_PORTABILITY_SOURCE": unreachable}, check=False)
    assert result.returncode == 2, result.stderr
    assert f"field '{field}" in result.stderr
    assert "connection" not in result.stderr.lower()


def test_unknown_field_is_named(store_env):
    from portability.records.schemas import SchemaSet
    from portability.service.request import RequestError, parse_request

    with pytest.raises(RequestError, match="unknown field 'acount_id'"):
        parse_request({"account_id": "x", "acount_id": "y"}, SchemaSet())


def published_keys(store) -> set[str]:
    return {key for bucket in ("exports-us", "exports-eu") for key in store.keys(bucket, "")}


def test_unknown_account_fails_and_leaves_no_archive(seeded, store):
    before = published_keys(store)
    result = portability_cli("export", "--account", "no-such-account", check=False)
    assert result.returncode == 2
    assert "account not found" in result.stderr
    assert published_keys(store) == before


def test_invalid_record_is_quarantined_with_its_reason(seeded, tmp_path):
    result = portability_cli("export", "--account", BAD_ACCOUNT, "--categories", "contacts,list_members", "--json")
    summary = json.loads(result.stdout)
    root = unpack_download(summary["url"], tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    contacts = manifest["contents"]["contacts"]
    assert contacts["quarantined"] == 1
    assert contacts["exported"] + 1 == contacts["source_count"]
    (error,) = jsonl(root / contacts["errors"]["path"])
    assert error["record"]["email"] == BAD_CONTACT_EMAIL
    assert [p["path"] for p in error["errors"]] == ["/email"]
    # The membership rows carry the same bad email and are quarantined too, each with its reason.
    members = manifest["contents"]["list_members"]
    assert members["quarantined"] >= 1
    assert summary["counts"]["contacts"]["quarantined"] == 1
    portability_cli("verify", summary["url"])


def unpack_download(url: str, folder):
    download(url, folder / "archive.zip")
    return unpack(folder / "archive.zip", folder)


def test_on_invalid_fail_fails_and_publishes_nothing(seeded, store):
    before = published_keys(store)
    result = portability_cli("export", "--account", BAD_ACCOUNT, "--on-invalid", "fail", check=False)
    assert result.returncode == 2
    assert "on_invalid=fail" in result.stderr
    assert BAD_CONTACT_EMAIL not in result.stderr  # personal data stays out of messages
    assert published_keys(store) == before
