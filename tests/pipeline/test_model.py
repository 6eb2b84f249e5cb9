"""The records the steps hand each other survive XCom: JSON and back gives the same record."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from portability.archive.deflate import DeflatedPiece
from portability.pipeline.model import PieceResult, Plan, Shard, ShardResult, Snapshot, Summary

PLAN = Plan(export_id="6f1f5d2e-3f7b-5c53-9d1e-7a0c4b8e2a41", account_id="acme-00001",
            categories=("contacts", "lists"), formats=("csv", "jsonl"), expires_in_hours=72,
            on_invalid="quarantine", piece_rows=250_000, shard_rows=2_000_000)
SNAPSHOT = Snapshot(bucket="exports-us", snapshot_at="2026-12-07T06:00:00.000000Z", region="us",
                    source_counts={"contacts": 3, "lists": 1}, pieces={"contacts": [2, 1], "lists": [1]},
                    references={"contacts": [{"column": "list_id", "what": "list", "joined": ["name"]}]})
RESULT = ShardResult("contacts", (
    PieceResult(0, 2, 1, 1, {"csv": DeflatedPiece(30, 7, 20), "jsonl": DeflatedPiece(40, 9, 25)},
                DeflatedPiece(50, 11, 30)),
    PieceResult(1, 1, 1, 0, {"csv": DeflatedPiece(10, 3, 8), "jsonl": DeflatedPiece(12, 4, 9)}),
), {"csv": "ab" * 32})
SUMMARY = Summary(export_id=PLAN.export_id, account_id="acme-00001", region="us", bucket="exports-us",
                  key="exports/x/y/acme-00001-x.zip", bytes=1234, sha256="cd" * 32,
                  snapshot_at=SNAPSHOT.snapshot_at, counts={"contacts": {"source_count": 3, "exported": 2,
                                                                          "quarantined": 1}})


def _through_xcom(record):
    return type(record).from_xcom(json.loads(json.dumps(record.to_xcom())))


def test_every_record_comes_back_the_same_from_json():
    for record in (PLAN, SNAPSHOT, Shard("contacts", 0, 2, 5), RESULT, SUMMARY):
        assert _through_xcom(record) == record


def test_a_plan_that_joined_another_export_says_so_after_xcom():
    joined = Plan.from_xcom({**PLAN.to_xcom(), "joined": "0c9d3a8e-0000-4000-8000-000000000000"})
    assert _through_xcom(joined).joined == "0c9d3a8e-0000-4000-8000-000000000000"
    assert not _through_xcom(joined).cancelled


def test_a_shard_is_named_by_its_pieces_counted_from_one():
    assert Shard("contacts", 0, 8, 40).label == "contacts pieces 1-8 of 40"
    assert Shard("contacts", 3, 4, 40).label == "contacts piece 4 of 40"
    assert Shard("contacts", 3, 4, 0).label == "contacts piece 4"  # the category is still being read


SUBJECT = "Jane.Doe+Private@Example.COM"


def test_a_subjects_plan_in_xcom_says_there_is_one_but_never_holds_the_address():
    subject_plan = replace(PLAN, categories=("contacts", "suppressions"), subject_email=SUBJECT,
                           since="2025-01-01T00:00:00Z")
    value = subject_plan.to_xcom()
    assert value["subject"] is True and "subject_email" not in value
    text = json.dumps(value, ensure_ascii=False)
    for form in (SUBJECT, SUBJECT.lower(), SUBJECT.upper(), "Jane.Doe", "jane.doe", "Example.COM"):
        assert form not in text, form
    assert SUBJECT not in repr(subject_plan) and SUBJECT.lower() not in repr(subject_plan).lower()
    # Back from XCom the address is gone: the service reads it back from the ledger (plan_from_xcom).
    back = _through_xcom(subject_plan)
    assert back.subject_email is None
    assert replace(back, subject_email=SUBJECT) == subject_plan


def test_a_whole_account_plan_in_xcom_says_there_is_no_subject():
    value = PLAN.to_xcom()
    assert value["subject"] is False and "subject_email" not in value
    assert _through_xcom(PLAN) == PLAN


def test_the_ledger_keeps_the_subjects_address_in_the_plans_options():
    assert replace(PLAN, subject_email=SUBJECT).options()["subject_email"] == SUBJECT
    assert PLAN.options()["subject_email"] is None


@given(address=st.emails(), since=st.none() | st.just("2025-01-01T00:00:00.000000Z"))
def test_no_address_is_ever_in_a_plans_xcom_value(address, since):
    plan = replace(PLAN, subject_email=address, since=since)
    text = json.dumps(plan.to_xcom(), ensure_ascii=False).lower()
    assert address.lower() not in text and json.dumps(address)[1:-1].lower() not in text
    assert address not in repr(plan) and address not in str(plan)
