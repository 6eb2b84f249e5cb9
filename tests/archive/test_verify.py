"""`portability verify` on an archive of 50,000 contacts: every record checked at columnar speed,
and what is wrong found with jsonschema's reason, even when every checksum has been made to match.

Each tampered copy below has its checksums regenerated (manifest.json, manifest-sha256.txt,
Payload-Oxum, tagmanifest-sha256.txt), so only the record and count checks can catch it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import struct
import zipfile

import psycopg
import pytest

from tests.helpers.commands import portability_cli

pytestmark = pytest.mark.e2e
ACCOUNT = "vfy-00001"
CONTACTS = 50_000
FORMATS = ["csv", "jsonl", "parquet"]


@pytest.fixture(scope="module")
def archive(seeded, source_dsn, tmp_path_factory):
    """An export of 50,000 contacts in every format, downloaded through its link."""
    import urllib.request

    from portability_dev.seed import SeedOptions, seed

    with psycopg.connect(source_dsn) as conn:
        if not conn.execute("SELECT 1 FROM accounts WHERE id = %s", (ACCOUNT,)).fetchone():
            seed(conn, SeedOptions(accounts=1, contacts=CONTACTS, prefix="vfy", large_html_bytes=0))
    summary = json.loads(portability_cli("export", "--account", ACCOUNT, "--formats", ",".join(FORMATS),
                                         "--json").stdout)
    path = tmp_path_factory.mktemp("verify") / "archive.zip"
    with urllib.request.urlopen(summary["url"], timeout=120) as response, open(path, "wb") as target:
        shutil.copyfileobj(response, target)
    return {"path": path, "summary": summary}


def rebag(source, target, edit) -> None:
    """Copy the archive with `edit(files)` applied to some of its files, every checksum regenerated.

    `files` maps a path inside the bag to a loader of its bytes; `edit` returns {path: new bytes}
    (manifest.json included, if the edit is of the manifest's counts). Unchanged entries are stored.
    """
    with zipfile.ZipFile(source) as zipped:
        infos = [i for i in zipped.infolist() if not i.is_dir()]
        root = infos[0].filename.split("/", 1)[0]

        def loader(info):
            return lambda: zipped.read(info)

        files = {i.filename[len(root) + 1:]: loader(i) for i in infos}
        changed = dict(edit(files))
        manifest = json.loads(changed.get("manifest.json") or files["manifest.json"]())
        sizes = {p: len(data) for p, data in changed.items()}
        sizes.update({i.filename[len(root) + 1:]: i.file_size for i in infos
                      if i.filename[len(root) + 1:] not in changed})
        digests = {p: hashlib.sha256(data).hexdigest() for p, data in changed.items()}
        if "manifest.json" not in changed:
            for entry in manifest["contents"].values():
                for file in [*entry["files"], *([entry["errors"]] if entry["errors"] else [])]:
                    if file["path"] in changed:
                        file["bytes"], file["sha256"] = sizes[file["path"]], digests[file["path"]]
            changed["manifest.json"] = json.dumps(manifest, indent=2).encode()
        payload_manifest = files["manifest-sha256.txt"]().decode()
        for path, digest in digests.items():
            payload_manifest = re.sub(rf"^[0-9a-f]{{64}}  {re.escape(path)}$", f"{digest}  {path}", payload_manifest,
                                      flags=re.M)
        changed["manifest-sha256.txt"] = payload_manifest.encode()
        payload = [p for p in sizes if p.startswith("data/")]
        changed["bag-info.txt"] = re.sub(rb"Payload-Oxum: \S+", f"Payload-Oxum: {sum(sizes[p] for p in payload)}."
                                         f"{len(payload)}".encode(), files["bag-info.txt"]())
        tags = [line.split("  ", 1)[1] for line in files["tagmanifest-sha256.txt"]().decode().splitlines()]
        changed["tagmanifest-sha256.txt"] = "".join(
            f"{hashlib.sha256(changed[t] if t in changed else files[t]()).hexdigest()}  {t}\n" for t in tags
        ).encode()
        with zipfile.ZipFile(target, "w") as out:
            for info in infos:
                path = info.filename[len(root) + 1:]
                if path in changed:
                    out.writestr(info.filename, changed[path], zipfile.ZIP_DEFLATED, 1)
                else:
                    with zipped.open(info) as data, out.open(zipfile.ZipInfo(info.filename, info.date_time), "w",
                                                              force_zip64=True) as copy:
                        shutil.copyfileobj(data, copy, 1 << 20)


def replace_lines(files, path: str, lines: dict[int, bytes | None]) -> bytes:
    """The file with its lines (1-based) replaced, or removed where the new line is None."""
    text = files[path]().split(b"\n")
    for number, line in sorted(lines.items(), reverse=True):
        if line is None:
            del text[number - 1]
        else:
            text[number - 1] = line
    return b"\n".join(text)


def line_of(files, path: str, number: int) -> dict:
    return json.loads(files[path]().split(b"\n")[number - 1])


def verify_error(path):
    """The VerificationError that verify raises on the archive (its message and its report)."""
    from portability.archive.verify import VerificationError, verify

    with pytest.raises(VerificationError) as failed:
        verify(str(path))
    return failed.value


def test_every_record_of_every_file_is_checked_and_nearly_none_by_jsonschema(archive):
    from portability.archive.verify import verify

    report = verify(str(archive["path"]))
    counts = archive["summary"]["counts"]
    assert report["categories"]["contacts"] == {"source_count": CONTACTS, "exported": CONTACTS, "quarantined": 0}
    assert report["records_checked"] == len(FORMATS) * sum(c["exported"] for c in counts.values())
    # Every record passed the columnar checks: jsonschema was not needed for any of them.
    assert report["records_judged_by_jsonschema"] == 0


def test_a_record_broken_in_json_lines_is_found_with_jsonschemas_reason(archive, tmp_path):
    def edit(files):
        record = line_of(files, "data/contacts.jsonl", 17_000)
        record["email"] = record["email"].replace("@", "_")
        return {"data/contacts.jsonl": replace_lines(files, "data/contacts.jsonl", {
            17_000: json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()})}

    rebag(archive["path"], tmp_path / "a.zip", edit)
    message = str(verify_error(tmp_path / "a.zip"))
    assert message.startswith("the archive does not match its manifest")
    assert "data/contacts.jsonl: 1 record fails data/schemas/contacts.schema.json: line 17000: /email (pattern): " \
           in message
    assert "does not match" in message  # jsonschema's own words
    assert "sha256" not in message and "csv" not in message and "parquet" not in message


def test_lines_of_any_shape_are_judged_by_jsonschema_and_only_they(archive, tmp_path):
    def edit(files):
        path = "data/contacts.jsonl"
        base = line_of(files, path, 5)

        def line(**changes) -> bytes:
            record = {**base, **changes}
            return json.dumps({k: v for k, v in record.items() if v is not ...}, ensure_ascii=False).encode()

        return {path: replace_lines(files, path, {
            # Valid records in unusual shapes: not reported.
            10: line(id=float(base["id"])),                              # 1.0 is an integer in JSON Schema
            11: json.dumps(dict(reversed(list(base.items())))).encode(),  # keys in another order, \u escapes
            12: b"  " + line() + b"  \r",                                # blank space around the object
            13: line(full_name=None, properties={"deep": [[[{"a": None}]]]}),
            # Invalid ones: each reported.
            20: line(unknown="x"),                                       # additionalProperties
            21: line(created_at=...),                                    # required
            22: line(id=str(base["id"])),                                # type
            23: line(id=2**63),                                          # maximum (beyond int64)
            24: line(properties=[1, 2]),                                 # type: a list is not an object
            25: line()[:-1] + b',"x":NaN}',                               # not JSON
            26: b"",                                                     # empty
        })}

    rebag(archive["path"], tmp_path / "b.zip", edit)
    error = verify_error(tmp_path / "b.zip")
    message = str(error)
    assert "data/contacts.jsonl: 7 records fail data/schemas/contacts.schema.json: " in message
    assert "line 20: / (additionalProperties): Additional properties are not allowed ('unknown' was unexpected)" \
           in message
    assert "line 21: / (required): 'created_at' is a required property" in message
    assert "line 22: /id (type): " in message
    assert "csv" not in message and "parquet" not in message
    # Only lines that did not decode into the record's shape, or failed a columnar check, met jsonschema.
    assert 7 <= error.report["records_judged_by_jsonschema"] <= 11
    assert error.report["records_checked"] == len(FORMATS) * sum(
        c["exported"] for c in archive["summary"]["counts"].values())


def test_counts_that_do_not_match_are_found(archive, tmp_path):
    def drop_a_line(files):
        return {"data/contacts.jsonl": replace_lines(files, "data/contacts.jsonl", {30_000: None})}

    rebag(archive["path"], tmp_path / "c.zip", drop_a_line)
    message = str(verify_error(tmp_path / "c.zip"))
    assert f"data/contacts.jsonl: {CONTACTS - 1} records, manifest says {CONTACTS}" in message

    def miscount(files):
        manifest = json.loads(files["manifest.json"]())
        manifest["contents"]["contacts"]["source_count"] += 1
        manifest["contents"]["list_members"]["quarantined"] += 1
        manifest["contents"]["list_members"]["source_count"] += 1
        return {"manifest.json": json.dumps(manifest, indent=2).encode()}

    rebag(archive["path"], tmp_path / "d.zip", miscount)
    message = str(verify_error(tmp_path / "d.zip"))
    assert f"contacts: exported {CONTACTS} + quarantined 0 != source {CONTACTS + 1}" in message
    assert "list_members: 0 quarantined records on file, manifest says 1" in message


def test_a_record_broken_in_parquet_is_found(archive, tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def edit(files):
        table = pq.read_table(io.BytesIO(files["data/contacts.parquet"]()))
        emails = table.column("email").to_pylist()
        emails[41_000] = "no-at-sign"
        table = table.set_column(table.schema.get_field_index("email"), table.schema.field("email"),
                                 pa.array(emails, pa.string()))
        assert pc.sum(pc.equal(table.column("email"), "no-at-sign")).as_py() == 1
        out = io.BytesIO()
        pq.write_table(table, out, row_group_size=131_072)
        return {"data/contacts.parquet": out.getvalue()}

    rebag(archive["path"], tmp_path / "e.zip", edit)
    message = str(verify_error(tmp_path / "e.zip"))
    assert "data/contacts.parquet: 1 record fails data/schemas/contacts.schema.json: row 41001: /email (pattern): " \
           "'no-at-sign' does not match" in message


def test_a_damaged_zip_entry_is_named(archive, tmp_path):
    damaged = tmp_path / "f.zip"
    shutil.copy(archive["path"], damaged)
    with zipfile.ZipFile(damaged) as zipped:
        info = next(i for i in zipped.infolist() if i.filename.endswith("data/contacts.parquet"))
    with open(damaged, "r+b") as stream:
        stream.seek(info.header_offset)
        name_length, extra_length = struct.unpack("<26xHH", stream.read(30))
        stream.seek(info.header_offset + 30 + name_length + extra_length + 1000)  # a byte of the stored Parquet
        byte = stream.read(1)
        stream.seek(-1, io.SEEK_CUR)
        stream.write(bytes([byte[0] ^ 0xFF]))
    message = str(verify_error(damaged))
    assert message.startswith("the BagIt bag is invalid")
    assert "data/contacts.parquet: the ZIP entry is damaged: its CRC-32 differs from its ZIP entry's" in message
