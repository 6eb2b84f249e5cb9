"""Export requests: defaults, canonical order, and refusals that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from portability.records.schemas import SchemaSet
from portability.service.request import RequestError, export_id_for_run, parse_request

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schemas():
    return SchemaSet(REPO / "schemas")


def test_defaults(schemas):
    request = parse_request({"account_id": "acme"}, schemas)
    assert request.categories == tuple(schemas.categories)
    assert request.formats == ("csv", "jsonl")
    assert (request.expires_in_hours, request.on_invalid) == (72, "quarantine")


def test_order_of_asking_does_not_matter(schemas):
    a = parse_request({"account_id": "a", "categories": ["contacts", "account"], "formats": ["parquet", "csv"]},
                      schemas)
    b = parse_request({"account_id": "a", "categories": ["account", "contacts"], "formats": ["csv", "parquet"]},
                      schemas)
    assert a == b and a.categories == ("account", "contacts")


def nested(depth: int):
    value: object = "lists"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({}, "field 'account_id' is required"),
        ({"account_id": "a", "cc": "x@y"}, "unknown field 'cc'"),
        ({"account_id": "a' OR '1'='1"}, "field 'account_id'"),
        ({"account_id": "a" * 65}, "field 'account_id'"),
        ({"account_id": "../../etc"}, "field 'account_id'"),
        ({"account_id": 7}, "field 'account_id'"),
        ({"account_id": "a", "categories": ["passwords"]}, "field 'categories[0]'"),
        ({"account_id": "a", "categories": []}, "field 'categories'"),
        ({"account_id": "a", "categories": ["lists", "lists"]}, "field 'categories'"),
        ({"account_id": "a", "formats": ["xlsx"]}, "field 'formats[0]'"),
        ({"account_id": "a", "expires_in_hours": 0}, "field 'expires_in_hours'"),
        ({"account_id": "a", "expires_in_hours": 169}, "field 'expires_in_hours'"),
        ({"account_id": "a", "expires_in_hours": 1.5}, "field 'expires_in_hours'"),
        ({"account_id": "a", "on_invalid": "ignore"}, "field 'on_invalid'"),
        ({"account_id": "a", "padding": "x" * 20_000}, "unknown field 'padding'"),
        ({"account_id": "a" * 1_000_000}, "field 'account_id' takes the request over its 16384-byte limit"),
        ({"account_id": "a", "requested_by": "x" * 20_000}, "field 'requested_by' takes the request over"),
        ({"account_id": "a", "categories": [[[[[[[[["lists"]]]]]]]]]}, "field 'categories' is nested more than"),
        ({"account_id": "a", "categories": nested(100_000)}, "field 'categories' is nested too deeply"),
        ({"account_id": "a", **{f"f{n}": n for n in range(5000)}}, "unknown field 'f0', 'f1', 'f2', 'f3', 'f4' and "
                                                                   "4995 more"),
        ({"account_id": "a", "formats": {"csv"}}, "field 'formats' is not a JSON value"),
        ({"account_id": "a", "expires_in_hours": float("nan")}, "field 'expires_in_hours'"),
        ({"account_id": "a", "expires_in_hours": True}, "field 'expires_in_hours'"),
        (["account_id", "a"], "expected a JSON object"),
    ],
)
def test_bad_requests_name_the_field(schemas, conf, named, tally):
    tally["hostile inputs tried"] += 1
    with pytest.raises(RequestError) as refused:
        parse_request(conf, schemas)
    assert named in str(refused.value)
    assert len(str(refused.value)) < 1000


def test_export_id_is_stable_per_run_and_differs_between_runs():
    assert export_id_for_run("account_export", "manual__1") == export_id_for_run("account_export", "manual__1")
    assert export_id_for_run("account_export", "manual__1") != export_id_for_run("account_export", "manual__2")
