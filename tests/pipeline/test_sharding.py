"""Sharding spreads a category over tasks without changing a byte of the archive."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers.accounts import BAD_ACCOUNT
from tests.helpers.archive_checks import check_counts_and_isolation, check_round_trip, check_standard_tools, unpack
from tests.helpers.exports import PIECE_ROWS, data_entries, export_archive, staged_route_archive

pytestmark = pytest.mark.e2e
ALL_FORMATS = ["csv", "jsonl", "parquet"]


@pytest.mark.parametrize("account", ["e2e-00002", BAD_ACCOUNT])
def test_sharded_archive_is_byte_identical(seeded, store, db, monkeypatch, tmp_path, account):
    from portability.pipeline import export

    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", str(PIECE_ROWS))
    plan = export.plan({"account_id": account, "formats": ALL_FORMATS}, str(uuid.uuid4()))
    snapshot = export.take_snapshot(plan)
    try:
        assert len(snapshot.pieces["contacts"]) > 1
        whole, whole_tasks = export_archive(store, plan, snapshot, shard_rows=10**9, reverse=False)
        per_piece, piece_tasks = export_archive(store, plan, snapshot, shard_rows=PIECE_ROWS, reverse=True)
        pairs, pair_tasks = export_archive(store, plan, snapshot, shard_rows=2 * PIECE_ROWS, reverse=False)
    finally:
        export.cleanup(plan.export_id, snapshot)
    assert whole_tasks == len(plan.categories) < pair_tasks < piece_tasks
    assert whole == per_piece == pairs

    (tmp_path / "a.zip").write_bytes(whole)
    root = unpack(tmp_path / "a.zip", tmp_path)
    manifest = check_counts_and_isolation(root, account, db)
    if account == BAD_ACCOUNT:
        assert manifest["contents"]["contacts"]["quarantined"] == 1
    else:
        check_round_trip(root, account, db, ALL_FORMATS)
    check_standard_tools(root)


def test_dag_maps_a_big_category_over_shards(seeded, run_dag, store, db, tmp_path, monkeypatch):
    """Through Airflow: contacts in several mapped tasks, and the archive is complete and valid."""
    from portability.pipeline import export
    from portability.service.request import export_id_for_run

    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", "70")
    monkeypatch.setenv("PORTABILITY_SHARD_ROWS", "140")
    run = run_dag({"account_id": "e2e-00003", "categories": ["contacts", "list_members"]})
    assert run["state"] == "success", run["output"][-4000:]
    assert run["tasks"]["export_shard"] == "success"
    assert run["output"].count("contacts pieces") >= 3  # each mapped task names its pieces in its log
    store_, summary = export.find_archive(export_id_for_run("account_export", run["run_id"]))
    sharded = store_.read_bytes(summary.bucket, summary.key)
    (tmp_path / "a.zip").write_bytes(sharded)
    root = unpack(tmp_path / "a.zip", tmp_path)
    check_counts_and_isolation(root, "e2e-00003", db)
    check_standard_tools(root)

    # The command (one process, one pass) writes the same data files, byte for byte.
    one_pass = export.run_export({"account_id": "e2e-00003", "categories": ["contacts", "list_members"]},
                                 str(uuid.uuid4()))
    assert data_entries(store.read_bytes(one_pass.bucket, one_pass.key)) == data_entries(sharded)


def test_dag_exports_an_account_in_one_shard_in_one_task(seeded, run_dag, store):
    """Below the shard size the DAG exports as the command does: no staged snapshot, no mapped task."""
    run = run_dag({"account_id": "e2e-00002", "categories": ["contacts", "list_members"]})
    assert run["state"] == "success", run["output"][-4000:]
    assert run["tasks"]["export_account"] == "success" and run["tasks"]["export_shard"] == "skipped"
    assert run["tasks"]["package"] == "skipped" and run["tasks"]["deliver"] == "success"
    assert "snapshot of contacts" in run["output"]


@pytest.mark.parametrize("account", ["e2e-00002", BAD_ACCOUNT])
def test_one_pass_route_writes_the_same_files_as_the_staged_route(seeded, store, monkeypatch, account):
    """The command reads, validates and writes in one pass; its data files equal the staged route's, byte for byte."""
    from portability.pipeline import export

    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", str(PIECE_ROWS))
    conf = {"account_id": account, "formats": ["csv", "jsonl"]}
    summary = export.run_export(conf, str(uuid.uuid4()))
    one_pass = store.read_bytes(summary.bucket, summary.key)
    staged = staged_route_archive(store, conf)
    assert not list(store.keys(summary.bucket, f"staging/{summary.export_id}/"))  # the command cleaned up

    files = data_entries(one_pass)
    assert files == data_entries(staged)
    assert "data/contacts.csv" in files and ("data/errors/contacts.jsonl" in files) == (account == BAD_ACCOUNT)


@pytest.mark.parametrize("formats", [["csv", "jsonl"], ALL_FORMATS])
def test_an_account_bigger_than_a_shard_is_handed_back_before_anything_is_read(seeded, store, monkeypatch, formats):
    """account_export's one task hands a big account back to be sharded: nothing staged, nothing published."""
    from portability.pipeline import export

    monkeypatch.setenv("PORTABILITY_SHARD_ROWS", "100")  # e2e-00003 has 300 contacts
    plan = export.plan({"account_id": "e2e-00003", "formats": formats}, str(uuid.uuid4()))
    with pytest.raises(export.NeedsShards, match="contacts"):
        export.export_in_process(plan, unless_sharded=True)
    for bucket in ("exports-us", "exports-eu"):
        assert not list(store.keys(bucket, f"staging/{plan.export_id}/"))
        assert not list(store.keys(bucket, f"exports/{plan.export_id}/"))
