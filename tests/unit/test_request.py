"""Export requests: defaults, canonical order, and refusals that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from portability.request import RequestError, export_id_for_run, parse_request
from portability.schemas import SchemaSet

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


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({}, "field 'account_id' is required"),
        ({"account_id": "a", "cc": "x@y"}, "unknown field 'cc'"),
        ({"account_id": "a' OR '1'='1"}, "field 'account_id'"),
        ({"account_id": "a" * 65}, "field 'account_id'"),
        ({"account_id": "../../etc"}, "field 'account_id'"),
        ({"account_id": 7}, "field 'account_id'"),
        ({"account_id": "a", "categories": ["users"]}, "field 'categories[0]'"),
        ({"account_id": "a", "categories": []}, "field 'categories'"),
        ({"account_id": "a", "categories": ["lists", "lists"]}, "field 'categories'"),
        ({"account_id": "a", "formats": ["xlsx"]}, "field 'formats[0]'"),
        ({"account_id": "a", "expires_in_hours": 0}, "field 'expires_in_hours'"),
        ({"account_id": "a", "expires_in_hours": 169}, "field 'expires_in_hours'"),
        ({"account_id": "a", "expires_in_hours": 1.5}, "field 'expires_in_hours'"),
        ({"account_id": "a", "on_invalid": "ignore"}, "field 'on_invalid'"),
        ({"account_id": "a", "padding": "x" * 20_000}, "byte limit"),
        (["account_id", "a"], "expected a JSON object"),
    ],
)
def test_bad_requests_name_the_field(schemas, conf, named):
    with pytest.raises(RequestError) as refused:
        parse_request(conf, schemas)
    assert named in str(refused.value)
    assert len(str(refused.value)) < 1000


def test_export_id_is_stable_per_run_and_differs_between_runs():
    assert export_id_for_run("account_export", "manual__1") == export_id_for_run("account_export", "manual__1")
    assert export_id_for_run("account_export", "manual__1") != export_id_for_run("account_export", "manual__2")
