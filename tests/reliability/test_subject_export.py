"""One data subject's export, end to end through the command (SPEC §3, §5, §6): the archive holds exactly what the
account has about one address (contact records, memberships with the list's name and address, suppressions,
messages sent to it and their events), says whose data it is, and verifies; the address reaches no object key,
log line or XCom value; a bad address or a category that cannot be narrowed is refused by field name."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers.archive_checks import check_standard_tools
from tests.helpers.commands import portability_cli
from tests.helpers.exports import data_entries
from tests.helpers.subjects import (
    NOTHING_HELD,
    SUBJECT_CATEGORIES,
    archive_file,
    archived_records,
    check_subject_archive,
    expected_keys,
    find_address,
    object_keys,
    plain_account,
    plant,
    same_address,
    zip_names,
)

pytestmark = pytest.mark.reliability

A, B = "subj-00001", "subj-00002"
SUBJECT = "Jane.Subject+Private@Example.COM"
# Stored in several cases: each is the subject's (SPEC §3 matches addresses case-insensitively).
STORED_AS = ("jane.subject+private@example.com", "JANE.SUBJECT+PRIVATE@EXAMPLE.COM", SUBJECT)
# Other people's addresses that a sloppy match (prefix, suffix, LIKE, a look-alike letter) would take for hers.
NEIGHBOURS = ("jjane.subject+private@example.com", "jane.subject+private@example.com.evil",
              "ane.subject+private@example.com", "jane.subject+private@example.co",
              "jane.subject+privat@example.com", "j\u0430ne.subject+private@example.com",  # Cyrillic а
              "\uff4aane.subject+private@example.com",  # fullwidth ｊ
              "jane.subject+private@exa\u0301mple.com",  # a combining accent
              "jane_subject+private@example.com", "jane%subject+private@example.com")
NOBODY = "nobody.at.all@nowhere-subject.example"


@pytest.fixture(scope="module")
def planted(store_env):
    """Two seeded accounts; in A the subject's rows (in three cases) and her neighbours', in B the subject's."""
    import psycopg

    from portability.resources import config
    from portability_dev.seed import SeedOptions, seed

    with psycopg.connect(config.source_settings().conninfo) as db:
        seed(db, SeedOptions(accounts=2, contacts=40, prefix="subj", large_html_bytes=0))
        for account in (A, B):
            lists = [r[0] for r in db.execute("SELECT id FROM lists WHERE account_id = %s ORDER BY id LIMIT 2",
                                              (account,))]
            campaign = db.execute("SELECT min(id) FROM campaigns WHERE account_id = %s", (account,)).fetchone()[0]
            stored = STORED_AS if account == A else (SUBJECT.lower(),)
            for n, address in enumerate(stored):
                plant(db, account, address, lists=lists if n == 0 else lists[:1], campaign=campaign,
                      messages=2 if n < 2 else 1, events_per_message=3 if n == 0 else 1)
            if account == A:
                for address in NEIGHBOURS:
                    plant(db, account, address, lists=lists[:1], campaign=campaign, messages=1, events_per_message=1)
        db.commit()
        expected = expected_keys(db, A, same_address(SUBJECT))
    assert all(expected[c] for c in SUBJECT_CATEGORIES), expected  # the subject has rows in every category
    return {"expected": expected}


def export(*args: str) -> subprocess.CompletedProcess:
    return portability_cli("-v", "export", *args, check=False)


@pytest.fixture(scope="module")
def subject_export(planted, store_env, tmp_path_factory):
    """The subject's export of A through `portability -v export --subject … --json`, and its archive."""
    from portability.resources import config
    from portability.resources.storage import ObjectStore

    result = export("--account", A, "--subject", SUBJECT, "--formats", "csv,jsonl,parquet", "--json")
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    store = ObjectStore(config.storage_settings())
    archive, root = archive_file(store, summary["bucket"], summary["key"], tmp_path_factory.mktemp("subject"))
    return {"result": result, "summary": summary, "archive": archive, "root": root, "store": store}


def test_the_archive_holds_exactly_the_subjects_rows_and_says_whose_they_are(planted, subject_export, db):
    expected = planted["expected"]
    manifest = check_subject_archive(subject_export["root"], A, SUBJECT, expected)
    assert list(manifest["contents"]) == list(SUBJECT_CATEGORIES)
    counts = subject_export["summary"]["counts"]
    assert {c: counts[c] for c in counts} == {
        c: {"source_count": len(keys), "exported": len(keys), "quarantined": 0} for c, keys in expected.items()}
    root = subject_export["root"]
    # Addresses as stored, in every case the account stored them.
    assert {r["email"] for r in archived_records(root, "contacts")} == set(STORED_AS)
    assert {r["address"] for r in archived_records(root, "suppressions")} == set(STORED_AS)
    assert {r["recipient"] for r in archived_records(root, "messages")} == set(STORED_AS)
    # A membership speaks the requester's language: the member's address and the list's name and address.
    lists = {row[0]: row[1:] for row in db.execute("SELECT id, name, address FROM lists WHERE account_id = %s", (A,))}
    for member in archived_records(root, "list_members"):
        assert (member["list_name"], member["list_address"]) == lists[member["list_id"]]
        assert member["email"] in STORED_AS
    # Which campaigns reached her: each message names its campaign (none for transactional mail).
    campaigns = dict(db.execute("SELECT id, name FROM campaigns WHERE account_id = %s", (A,)).fetchall())
    messages = {r["id"]: r for r in archived_records(root, "messages")}
    assert any(r["campaign_id"] is None for r in messages.values())
    for record in messages.values():
        assert record.get("campaign_name") == campaigns.get(record["campaign_id"])
    # Every event is of one of her messages.
    assert {r["message_id"] for r in archived_records(root, "events")} <= set(messages)


def test_the_subjects_archive_verifies(subject_export):
    verified = portability_cli("verify", str(subject_export["archive"]), check=False)
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout + verified.stderr
    check_standard_tools(subject_export["root"])


def test_the_address_is_in_no_object_key_and_no_line_of_the_commands_output(subject_export):
    result = subject_export["result"]
    output = result.stdout + result.stderr
    assert "INFO" in result.stderr, "-v logged nothing: the check would prove nothing"
    for address in (SUBJECT, *STORED_AS):
        assert find_address(output, address) is None, find_address(output, address)
    keys = object_keys(subject_export["store"])
    assert any(subject_export["summary"]["export_id"] in key for key in keys)
    for key in keys + zip_names(subject_export["archive"]):
        assert find_address(key, SUBJECT) is None, key


def test_the_address_is_in_no_log_of_the_servers(subject_export, store_env):
    """Neither PostgreSQL's log (the address reaches it as a bound setting, never in a statement's text) nor the S3
    server's."""
    from pathlib import Path

    logs = [p for p in Path(store_env["AIRFLOW_HOME"]).parent.joinpath("stores").rglob("*.log") if p.is_file()]
    assert logs, "no server log found: the check would prove nothing"
    for path in logs:
        text = path.read_text(errors="replace")
        assert find_address(text, SUBJECT) is None, (path, find_address(text, SUBJECT))


def test_the_same_address_in_another_case_gives_the_same_data(planted, subject_export, tmp_path):
    result = export("--account", A, "--subject", SUBJECT.swapcase(), "--formats", "csv,jsonl,parquet", "--json")
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    archive, root = archive_file(subject_export["store"], summary["bucket"], summary["key"], tmp_path)
    check_subject_archive(root, A, SUBJECT.swapcase(), planted["expected"])
    assert data_entries(archive.read_bytes()) == data_entries(subject_export["archive"].read_bytes())


def test_nothing_of_the_other_account_is_in_the_subjects_archive(planted, subject_export, db):
    root = subject_export["root"]
    theirs = expected_keys(db, B, same_address(SUBJECT))
    assert all(theirs[c] for c in SUBJECT_CATEGORIES)
    for category in SUBJECT_CATEGORIES:
        from tests.helpers.archive_checks import record_key

        ours = {record_key(category, r) for r in archived_records(root, category)}
        assert not ours & theirs[category], category


def test_an_address_with_no_data_gives_an_archive_of_zero_counts_that_says_so(planted, store, tmp_path):
    result = export("--account", A, "--subject", NOBODY, "--json")
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert set(summary["counts"]) == set(SUBJECT_CATEGORIES)
    assert all(c == {"source_count": 0, "exported": 0, "quarantined": 0} for c in summary["counts"].values()), (
        summary["counts"])
    archive, root = archive_file(store, summary["bucket"], summary["key"], tmp_path)
    check_subject_archive(root, A, NOBODY, {c: set() for c in SUBJECT_CATEGORIES})
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert NOTHING_HELD.search(readme), readme[:2000]
    verified = portability_cli("verify", str(archive), check=False)
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout + verified.stderr
    assert find_address(result.stdout + result.stderr, NOBODY) is None


def test_an_address_that_begins_with_a_dash_is_taken_as_typed(planted):
    """`--subject -x@…` as `--account -x1` is: a valid address is accepted whatever its first character."""
    result = export("--account", A, "--subject", "-dash.subject@example.org", "--json")
    assert result.returncode == 0, result.stderr[-4000:]
    assert all(c["source_count"] == 0 for c in json.loads(result.stdout)["counts"].values())


BAD = {
    "not an email": (["--subject", "zelda.private.person"], "subject_email"),
    "two at signs": (["--subject", "zelda.private@person@example.com"], "subject_email"),
    "a display name": (["--subject", "Zelda Private <zelda.private@example.com>"], "subject_email"),
    "a trailing newline": (["--subject", "zelda.private@example.com\n"], "subject_email"),
    "255 characters": (["--subject", "zelda.private." + "x" * 235 + "@e.com"], "subject_email"),
    "4000 characters": (["--subject", "zelda.private." + "x" * 3980 + "@e.com"], "subject_email"),
    "a category that cannot be narrowed": (["--categories", "domains", "--subject", "zelda.private@example.com"],
                                           "categories"),
    "the account among others": (["--categories", "account,contacts", "--subject", "zelda.private@example.com"],
                                 "categories"),
}


def _exports_of(account: str) -> int:
    from portability.resources import ledger

    with ledger.connect() as conn:
        return conn.execute("SELECT count(*) AS n FROM exports WHERE account_id = %s", (account,)).fetchone()["n"]


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_subject_request_exits_2_naming_the_field_without_echoing_the_address(case, planted, tally):
    args, field = BAD[case]
    address = args[args.index("--subject") + 1]
    before = _exports_of(A)
    result = portability_cli("export", "--account", A, *args, "--json", check=False)
    tally["hostile inputs tried"] += 1
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and not result.stdout.strip(), result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"portability export: invalid export request: field '{field}'"), lines[0]
    # Nor in what -v adds (the failure's traceback, for an engineer).
    verbose = export("--account", A, *args, "--json")
    assert verbose.returncode == 2
    for text in (result.stderr, verbose.stdout + verbose.stderr):
        assert find_address(text, address.strip()) is None, find_address(text, address.strip())
        assert "zelda" not in text.lower(), text[-2000:]
    assert _exports_of(A) == before  # refused before anything was recorded or read


def test_staged_pieces_of_a_subjects_export_are_keyed_without_the_address(planted, store, monkeypatch, tmp_path):
    """The staged route (snapshot staged in pieces, then shards, as the DAG runs a big account): no staging key
    carries the address while the pieces are there, and the archive holds the same records."""
    import uuid

    from portability.pipeline import export
    from tests.helpers.exports import export_archive

    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", "2")
    plan = export.plan({"account_id": A, "subject_email": SUBJECT, "formats": ["jsonl", "parquet"]},
                       str(uuid.uuid4()))
    snapshot = export.take_snapshot(plan)
    try:
        staged = object_keys(store)
        assert any("staging/" in key and plan.export_id in key for key in staged), staged[:5]
        for key in staged:
            assert find_address(key, SUBJECT) is None, key
        data, shards = export_archive(store, plan, snapshot, shard_rows=2, reverse=True)
    finally:
        export.cleanup(plan.export_id, snapshot)
    assert shards > len(SUBJECT_CATEGORIES)
    (tmp_path / "staged.zip").write_bytes(data)
    from tests.helpers.archive_checks import unpack

    check_subject_archive(unpack(tmp_path / "staged.zip", tmp_path), A, SUBJECT, planted["expected"])


def _xcom_values(env: dict, run_id: str) -> list[tuple[str, str, str]]:
    """(task, key, value as JSON text) of every XCom of the run, read from Airflow's metadata database."""
    import psycopg

    url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("postgresql+psycopg2://", "postgresql://").replace(
        "postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        return [tuple(row) for row in conn.execute(
            "SELECT task_id, key, value::text FROM xcom WHERE dag_id = 'account_export' AND run_id = %s", (run_id,))]


def test_the_dag_exports_the_subject_in_shards_with_the_address_in_no_xcom_or_log(planted, run_dag, airflow_db,
                                                                                 store, monkeypatch, tmp_path):
    from pathlib import Path

    from portability.pipeline import export
    from portability.service.request import export_id_for_run

    # Sharded (export_shard and package each read the plan back through XCom), in pieces of two rows.
    monkeypatch.setenv("PORTABILITY_SHARD_ROWS", "2")
    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", "2")
    run = run_dag({"account_id": A, "subject_email": SUBJECT, "formats": ["jsonl"]})
    assert run["state"] == "success", run["output"][-4000:]
    assert any(task.startswith("export_shard") for task in run["tasks"]), run["tasks"]
    _, summary = export.find_archive(export_id_for_run("account_export", run["run_id"]))
    archive, root = archive_file(store, summary.bucket, summary.key, tmp_path)
    check_subject_archive(root, A, SUBJECT, planted["expected"])

    values = _xcom_values(airflow_db, run["run_id"])
    assert any(task == "validate_request" for task, _, _ in values), values
    for task, key, value in values:
        assert find_address(value, SUBJECT) is None, (task, key, find_address(value, SUBJECT))
    plan = next(value for task, key, value in values if task == "validate_request" and key == "return_value")
    assert '"subject": true' in plan, plan
    # The task logs, wherever Airflow wrote them (`airflow dags test` also prints them, in the run's output).
    for path in Path(airflow_db["AIRFLOW_HOME"]).rglob("*.log"):
        assert find_address(path.read_text(errors="replace"), SUBJECT) is None, path
    assert find_address(run["output"], SUBJECT) is None, find_address(run["output"], SUBJECT)
    for key in object_keys(store):
        assert find_address(key, SUBJECT) is None, key


@pytest.mark.parametrize("under_way", ["whole account", "subject", "same subject"])
def test_a_subjects_export_and_a_whole_accounts_never_join_each_other(planted, db, under_way):
    """An export under way serves another request only if it is the same archive: a subject's request never waits
    on a whole account's export (whose archive holds everyone), nor a whole account's on a subject's."""
    from datetime import timedelta

    from portability.records.schemas import SchemaSet
    from portability.resources import ledger
    from portability.service.request import parse_request

    whole = {"account_id": A, "categories": ["contacts", "suppressions"], "formats": ["jsonl"]}
    subject = {**whole, "subject_email": SUBJECT}
    held, asked = {"whole account": (whole, subject), "subject": (subject, whole),
                   "same subject": (subject, subject)}[under_way]
    # A live export of `held`: its process holds the lease (long enough for the command to start under load).
    with ledger.connect() as conn:
        _, held_id, options = ledger.start_in_process(conn, parse_request(held, SchemaSet()).to_dict(),
                                                      requested_by="test", notify_email=None,
                                                      lease=timedelta(seconds=25))
    assert options is not None
    try:
        result = export("--account", A, "--categories", "contacts,suppressions", "--formats", "jsonl", "--json",
                        *(["--subject", SUBJECT] if "subject_email" in asked else []))
    finally:
        with ledger.connect() as conn:
            ledger.fail(conn, held_id, "test: a simulated export under way")
    assert result.returncode == 0, result.stderr[-3000:]
    joined = "under way: waiting for its archive" in result.stderr
    # The same subject's request waits on it (until its lease runs out, then exports itself); no other does.
    assert joined == (under_way == "same subject"), result.stderr[-3000:]
    counts = json.loads(result.stdout)["counts"]
    owned = db.execute("SELECT count(*) FROM contacts WHERE account_id = %s", (A,)).fetchone()[0]
    wanted = len(planted["expected"]["contacts"]) if "subject_email" in asked else owned
    assert counts["contacts"]["exported"] == wanted


@pytest.mark.parametrize("narrowing", [["--subject", "zelda.private@example.com"],
                                       ["--since", "2025-01-01T00:00:00Z"]])
def test_a_schedule_is_never_narrowed_to_one_subject_or_a_time_window(planted, narrowing):
    """A schedule keeps the account's options only: taking --subject would export the whole account every time."""
    from portability.resources import ledger

    result = portability_cli("schedule", "--account", A, "--every-days", "30", *narrowing, check=False)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    field = "subject_email" if narrowing[0] == "--subject" else "since"
    assert f"field '{field}'" in lines[0], lines[0]
    assert "zelda" not in result.stderr.lower()
    with ledger.connect() as conn:
        assert conn.execute("SELECT 1 FROM export_schedules WHERE account_id = %s", (A,)).fetchone() is None


def test_a_subjects_export_bounded_in_time_holds_her_messages_and_events_of_that_window(planted, db, store,
                                                                                      tmp_path):
    """--since/--until bound messages (by sent_at) and events (by occurred_at); the rest of her data is whole."""
    from datetime import UTC, datetime

    account = "subjtime-00001"
    made = plain_account(db, account)
    address = "timed.subject@example.com"
    plant(db, account, address, lists=made["lists"], campaign=made["campaign"], messages=3, events_per_message=1)
    instants = [datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)]
    ids = [r[0] for r in db.execute("SELECT id FROM messages WHERE account_id = %s ORDER BY id", (account,))]
    for message_id, instant in zip(ids, instants, strict=True):
        db.execute("UPDATE messages SET sent_at = %s WHERE id = %s", (instant, message_id))
        db.execute("UPDATE events SET occurred_at = %s WHERE message_id = %s", (instant, message_id))
    db.commit()
    result = export("--account", account, "--subject", address, "--since", "2025-03-01T00:00:00+01:00",
                    "--until", "2025-12-31T00:00:00Z", "--formats", "jsonl", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    _, root = archive_file(store, summary["bucket"], summary["key"], tmp_path)
    expected = expected_keys(db, account, same_address(address))
    expected["messages"] = {(ids[1],)}
    expected["events"] = {tuple(r) for r in db.execute("SELECT id FROM events WHERE message_id = %s", (ids[1],))}
    manifest = check_subject_archive(root, account, address, expected)
    assert (manifest["since"], manifest["until"]) == ("2025-02-28T23:00:00.000000Z", "2025-12-31T00:00:00.000000Z")
    assert "2025-02-28T23:00:00.000000Z" in (root / "README.md").read_text(encoding="utf-8")


def test_the_dag_refuses_a_category_that_cannot_be_narrowed_before_any_read(planted, run_dag, airflow_db):
    run = run_dag({"account_id": A, "subject_email": SUBJECT, "categories": ["contacts", "domains"]})
    assert run["state"] == "failed", run["output"][-3000:]
    assert run["tasks"]["validate_request"] == "failed", run["tasks"]
    assert run["tasks"]["export_account"] in ("upstream_failed", None), run["tasks"]
    assert "invalid export request: field 'categories': domains cannot be narrowed" in run["output"]
    assert find_address(run["output"], SUBJECT) is None, find_address(run["output"], SUBJECT)
    for task, key, value in _xcom_values(airflow_db, run["run_id"]):
        assert find_address(value, SUBJECT) is None, (task, key)


def test_a_subjects_message_pointing_at_another_accounts_campaign_is_quarantined_and_counted(planted, db, store,
                                                                                            tmp_path):
    """Nothing of hers dropped without a count (SPEC §6): a message of the account sent to her that names another
    account's campaign (or contact) is quarantined with the reason, not exported, not lost."""
    account, other = "subjxref-00001", "subjxref-00002"
    made, theirs = plain_account(db, account), plain_account(db, other)
    address = "quarantined.subject@example.com"
    plant(db, account, address, lists=made["lists"], campaign=made["campaign"], messages=1, events_per_message=1)
    plant(db, account, address, lists=[], campaign=theirs["campaign"], contacts=0, suppressions=0, messages=1,
          events_per_message=1)
    db.commit()
    crossed = db.execute("SELECT id FROM messages WHERE account_id = %s AND campaign_id = %s",
                         (account, theirs["campaign"])).fetchone()[0]
    result = export("--account", account, "--subject", address, "--formats", "jsonl", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    _, root = archive_file(store, summary["bucket"], summary["key"], tmp_path)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    entry = manifest["contents"]["messages"]
    assert (entry["source_count"], entry["exported"], entry["quarantined"]) == (2, 1, 1), entry
    from tests.helpers.archive_checks import jsonl

    [error] = jsonl(root / entry["errors"]["path"])
    assert error["record"]["id"] == crossed and error["errors"][0]["path"] == "/campaign_id", error
    assert error["record"]["campaign_name"] is None  # nothing of the other account's campaign
    assert [r["id"] for r in archived_records(root, "messages")] != [crossed]
    events = manifest["contents"]["events"]
    assert events["exported"] + events["quarantined"] == events["source_count"] == 2, events


def test_no_statement_postgresql_runs_carries_the_address(planted, db, store_env):
    """With every statement logged (their text, not their bound parameters), the subject's export leaves no trace
    of the address: the queries read it from a setting bound as a parameter (SPEC §3, resources/source.py)."""
    from pathlib import Path

    log = Path(store_env["AIRFLOW_HOME"]).parent / "stores" / "postgres" / "postgres.log"
    assert log.is_file()
    db.autocommit = True
    db.execute("ALTER SYSTEM SET log_statement = 'all'")
    db.execute("ALTER SYSTEM SET log_parameter_max_length = 0")  # bound values are the point: left out of the log
    db.execute("SELECT pg_reload_conf()")
    start = log.stat().st_size
    try:
        result = export("--account", A, "--subject", SUBJECT, "--formats", "csv,parquet", "--json")
    finally:
        db.execute("ALTER SYSTEM RESET log_statement")
        db.execute("ALTER SYSTEM RESET log_parameter_max_length")
        db.execute("SELECT pg_reload_conf()")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(log, encoding="utf-8", errors="replace") as text:
        text.seek(start)
        logged = text.read()
    assert "current_setting('portability.subject_email')" in logged, logged[-3000:]  # the subject's queries ran
    assert find_address(logged, SUBJECT) is None, find_address(logged, SUBJECT)
