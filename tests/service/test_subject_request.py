"""One data subject's request (SPEC §3, §6): subject_email narrows the categories to those the mapping can narrow
to one address, is refused by field name without being echoed, and since/until are canonical UTC instants."""

from __future__ import annotations

import pytest

from portability.records.schemas import SchemaSet
from portability.service.request import RequestError, parse_request
from tests.helpers import REPO

SUBJECT = "Jane.Doe+news@Example.COM"
# The categories the reference mapping narrows to one address (its [categories.<c>.subject] sections).
REFERENCE_SUBJECT_CATEGORIES = ("list_members", "contacts", "suppressions", "messages", "events")

# A mapping of our own, so that these tests do not depend on which sections the reference mapping has:
# contacts and suppressions narrow to one address, lists and domains do not.
SMALL_MAPPING = '''
[categories.lists]
order_by = "id"
count = "SELECT count(*) FROM lists WHERE account_id = %(account_id)s"
query = "SELECT id FROM lists WHERE account_id = %(account_id)s"

[categories.domains]
order_by = "id"
count = "SELECT count(*) FROM domains WHERE account_id = %(account_id)s"
query = "SELECT id FROM domains WHERE account_id = %(account_id)s"

[categories.suppressions]
order_by = "id"
count = "SELECT count(*) FROM suppressions WHERE account_id = %(account_id)s"
query = "SELECT id FROM suppressions WHERE account_id = %(account_id)s"

[categories.suppressions.subject]
count = """SELECT count(*) FROM suppressions
           WHERE account_id = %(account_id)s AND lower(address) = lower(%(subject_email)s)"""
query = """SELECT id FROM suppressions
           WHERE account_id = %(account_id)s AND lower(address) = lower(%(subject_email)s)"""

[categories.contacts]
order_by = "id"
count = "SELECT count(*) FROM contacts WHERE account_id = %(account_id)s"
query = "SELECT id FROM contacts WHERE account_id = %(account_id)s"

[categories.contacts.subject]
count = """SELECT count(*) FROM contacts
           WHERE account_id = %(account_id)s AND lower(email) = lower(%(subject_email)s)"""
query = """SELECT id FROM contacts
           WHERE account_id = %(account_id)s AND lower(email) = lower(%(subject_email)s)"""
'''


@pytest.fixture(scope="module")
def schemas():
    return SchemaSet(REPO / "schemas")


@pytest.fixture
def small_mapping(tmp_path, monkeypatch):
    path = tmp_path / "small.toml"
    path.write_text(SMALL_MAPPING, encoding="utf-8")
    monkeypatch.setenv("PORTABILITY_MAPPING", str(path))
    return path


def refused(conf: dict, schemas) -> str:
    with pytest.raises(RequestError) as error:
        parse_request(conf, schemas)
    return str(error.value)


def assert_not_echoed(message: str, address: str) -> None:
    for form in {address, address.lower(), address.upper(), address.strip()} - {""}:
        assert form not in message, f"the address is echoed: {message}"
    # Nor a recognisable piece of it (the local part, which the clipped echo of other fields would keep).
    local = address.partition("@")[0]
    if len(local) >= 6:
        assert local not in message, f"the address is echoed: {message}"


# --- which categories ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("categories", [None, "omitted", "the default list"])
def test_left_to_the_default_a_subjects_request_takes_every_category_narrowed_to_one_address(
        schemas, small_mapping, categories):
    conf = {"account_id": "acme", "subject_email": SUBJECT}
    if categories is None:
        conf["categories"] = None  # the trigger form's empty field
    elif categories == "the default list":  # the trigger form's multi-select, left as it is
        conf["categories"] = list(schemas.request["properties"]["categories"]["default"])
    request = parse_request(conf, schemas)
    assert request.categories == ("contacts", "suppressions")  # canonical order, only those with a subject query
    assert request.subject_email == SUBJECT  # as given: matched case-insensitively by the queries


def test_a_subset_of_the_narrowed_categories_is_kept_in_canonical_order(schemas, small_mapping):
    request = parse_request({"account_id": "acme", "subject_email": SUBJECT,
                             "categories": ["suppressions", "contacts"]}, schemas)
    assert request.categories == ("contacts", "suppressions")
    request = parse_request({"account_id": "acme", "subject_email": SUBJECT, "categories": ["suppressions"]},
                            schemas)
    assert request.categories == ("suppressions",)


@pytest.mark.parametrize("categories", [["domains"], ["contacts", "domains"], ["lists", "suppressions"],
                                        ["account"]])
def test_a_category_named_on_purpose_that_cannot_be_narrowed_is_refused_naming_categories(
        schemas, small_mapping, categories, tally):
    tally["hostile inputs tried"] += 1
    message = refused({"account_id": "acme", "subject_email": SUBJECT, "categories": categories}, schemas)
    assert message.startswith("invalid export request: field 'categories'"), message
    other = [c for c in categories if c not in ("contacts", "suppressions")]
    assert all(c in message for c in other), message
    assert_not_echoed(message, SUBJECT)


def test_without_a_subject_the_request_is_unchanged(schemas, small_mapping):
    request = parse_request({"account_id": "acme", "categories": ["domains", "lists"]}, schemas)
    assert request.categories == ("domains", "lists") and request.subject_email is None


def test_a_mapping_that_narrows_nothing_refuses_a_subject_naming_the_field(schemas, tmp_path, monkeypatch):
    path = tmp_path / "none.toml"
    path.write_text(SMALL_MAPPING.split("[categories.suppressions.subject]")[0], encoding="utf-8")
    monkeypatch.setenv("PORTABILITY_MAPPING", str(path))
    message = refused({"account_id": "acme", "subject_email": SUBJECT}, schemas)
    assert message.startswith("invalid export request: field 'subject_email'"), message
    assert_not_echoed(message, SUBJECT)


def test_the_reference_mapping_narrows_exactly_the_subjects_categories(schemas, monkeypatch):
    monkeypatch.delenv("PORTABILITY_MAPPING", raising=False)
    request = parse_request({"account_id": "acme", "subject_email": SUBJECT}, schemas)
    enum = schemas.request["properties"]["categories"]["items"]["enum"]
    assert request.categories == tuple(c for c in enum if c in REFERENCE_SUBJECT_CATEGORIES)
    assert set(request.categories) == set(REFERENCE_SUBJECT_CATEGORIES)


# --- the address itself -------------------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "a@b",
    "jane@example.com",
    "Jane.O'Hara+tag@sub.example.co.uk",
    "用户@例子.广告",
    "x" * 250 + "@b.c",  # 254 characters: the longest a path in SMTP allows
])
def test_an_address_is_accepted_as_given(schemas, small_mapping, address):
    request = parse_request({"account_id": "acme", "subject_email": address}, schemas)
    assert request.subject_email == address
    assert request.to_dict()["subject_email"] == address  # the ledger keeps it
    assert address not in repr(request)  # a logged request does not show it


BAD_ADDRESSES = [
    "zelda-private",
    "zelda-private@",
    "@zelda-private.example",
    "zelda-private@@example.com",
    "zelda-private@exa@mple.com",
    "zelda-private doe@example.com",
    "zelda-private@example.com ",
    " zelda-private@example.com",
    "zelda-private@example.com\n",
    "zelda-private@example.com\nBcc: evil@x.y",
    "zelda-private@example.com,rupert@example.com",
    "zelda-private@example.com;rupert@example.com",
    "Zelda-private <zelda-private@example.com>",
    '"zelda-private"@example.com',
    "zelda-private\t@example.com",
    "ab",
    "",
    "x" * 251 + "@b.c",  # 255 characters
    "x" * 5000 + "@example.com",
    "zelda-private-secret-local-part@example.com\u2028",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES, ids=[f"bad{n}" for n in range(len(BAD_ADDRESSES))])
def test_a_bad_address_is_refused_naming_the_field_without_echoing_it(schemas, small_mapping, address, tally):
    tally["hostile inputs tried"] += 1
    message = refused({"account_id": "acme", "subject_email": address}, schemas)
    assert message.startswith("invalid export request: field 'subject_email'"), message
    assert_not_echoed(message, address)
    assert len(message) < 300


@pytest.mark.parametrize("value", [7, True, ["zelda@private.example"], {"email": "zelda@private.example"}, 1.5])
def test_a_subject_that_is_not_a_string_is_refused_naming_the_field(schemas, small_mapping, value):
    message = refused({"account_id": "acme", "subject_email": value}, schemas)
    assert message.startswith("invalid export request: field 'subject_email'"), message
    assert "zelda" not in message


def test_a_bad_address_beside_another_bad_field_is_still_not_echoed(schemas, small_mapping):
    address = "zelda-doe-private@"
    message = refused({"account_id": "acme", "subject_email": address, "expires_in_hours": 0}, schemas)
    assert_not_echoed(message, address)


# --- since and until ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "canonical"), [
    ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00.000000Z"),
    ("2025-01-01T00:00:00z", "2025-01-01T00:00:00.000000Z"),
    ("2025-01-01t00:00:00Z", "2025-01-01T00:00:00.000000Z"),
    ("2025-01-01T00:00:00+00:00", "2025-01-01T00:00:00.000000Z"),
    ("2025-01-01T02:30:00+02:30", "2025-01-01T00:00:00.000000Z"),
    ("2024-12-31T19:00:00-05:00", "2025-01-01T00:00:00.000000Z"),
    ("2025-01-01T00:00:00.5Z", "2025-01-01T00:00:00.500000Z"),
    ("2025-06-30T23:59:59.123456+00:00", "2025-06-30T23:59:59.123456Z"),
    ("0999-12-31T23:59:59Z", "0999-12-31T23:59:59.000000Z"),
])
def test_since_and_until_are_kept_as_utc_instants(schemas, given, canonical):
    request = parse_request({"account_id": "acme", "since": given}, schemas)
    assert request.since == canonical and request.until is None
    request = parse_request({"account_id": "acme", "until": given}, schemas)
    assert request.until == canonical and request.since is None
    assert request.to_dict()["until"] == canonical


def test_without_since_or_until_nothing_is_bounded(schemas):
    request = parse_request({"account_id": "acme", "since": None, "until": None}, schemas)
    assert (request.since, request.until) == (None, None)


@pytest.mark.parametrize("value", [
    "2025-01-01T00:00:00",        # no offset: which instant?
    "2025-01-01",                 # a date, not an instant
    "2025-01-01 00:00:00Z",       # RFC 3339 wants the T
    "yesterday",
    "",
    "2025-13-01T00:00:00Z",
    "2025-02-30T00:00:00Z",
    "2025-01-01T25:00:00Z",
    "9999-12-31T23:59:59-01:00",  # past the last instant Python (and the archive) can hold, once in UTC
    "0001-01-01T00:00:00+01:00",  # before the first
    "2025-01-01T00:00:00Z'; DROP TABLE messages; --",
])
@pytest.mark.parametrize("field", ["since", "until"])
def test_a_bad_instant_is_refused_naming_the_field(schemas, field, value, tally):
    tally["hostile inputs tried"] += 1
    message = refused({"account_id": "acme", field: value}, schemas)
    assert message.startswith(f"invalid export request: field '{field}'"), message
    assert len(message) < 1000


@pytest.mark.parametrize("value", [7, True, ["2025-01-01T00:00:00Z"]])
def test_an_instant_that_is_not_a_string_is_refused_naming_the_field(schemas, value):
    message = refused({"account_id": "acme", "since": value}, schemas)
    assert message.startswith("invalid export request: field 'since'"), message


@pytest.mark.parametrize(("since", "until"), [
    ("2025-01-02T00:00:00Z", "2025-01-01T00:00:00Z"),
    ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
    ("2025-01-01T01:00:00+01:00", "2025-01-01T00:00:00Z"),  # the same instant, written two ways
    ("2025-01-01T00:00:00.5Z", "2025-01-01T00:00:00Z"),  # as text, "00.5Z" sorts before "00Z"
])
def test_until_must_be_after_since(schemas, since, until):
    message = refused({"account_id": "acme", "since": since, "until": until}, schemas)
    assert message.startswith("invalid export request: field 'until'"), message


def test_since_before_until_is_kept(schemas, small_mapping):
    request = parse_request({"account_id": "acme", "since": "2025-01-01T00:00:00Z",
                             "until": "2025-01-01T00:00:00.000001Z", "subject_email": SUBJECT}, schemas)
    assert (request.since, request.until) == ("2025-01-01T00:00:00.000000Z", "2025-01-01T00:00:00.000001Z")
    request = parse_request({"account_id": "acme", "since": "2025-01-01T00:00:00.5Z",
                             "until": "2025-01-01T00:00:01Z"}, schemas)
    assert (request.since, request.until) == ("2025-01-01T00:00:00.500000Z", "2025-01-01T00:00:01.000000Z")
