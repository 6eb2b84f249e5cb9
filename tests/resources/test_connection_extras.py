"""Connections are read as Airflow's own hooks read them: the S3 client comes from S3Hook (endpoint, region,
role_arn, profile_name, config_kwargs, service_config), the PostgreSQL conninfo from PostgresHook's
connection arguments (every extra but the hook's own, IAM tokens). No secret in any repr or error text."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from portability.resources import config, storage

SECRET = "PLANTEDSECRET-9c1e"


def s3_connection(monkeypatch, **fields) -> config.StorageSettings:
    fields.setdefault("conn_type", "aws")
    monkeypatch.setenv("AIRFLOW_CONN_PORTABILITY_S3", json.dumps(fields))
    monkeypatch.setenv("PORTABILITY_BUCKETS", '{"us": "exports-us"}')
    return config.storage_settings()


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch, tmp_path):
    """Only what a test's connection says: no credentials, profile or region from the machine."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_our_client_settings_apply_under_an_endpoint(monkeypatch):
    settings = s3_connection(monkeypatch, login="AKIDTEST", password=SECRET,
                             extra={"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"})
    client = storage.make_client(settings)
    cfg = client.meta.config
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.region_name == "eu-west-1"
    assert cfg.signature_version == "s3v4"
    assert cfg.s3 == {"addressing_style": "path"}
    assert cfg.retries == {"mode": "standard", "total_max_attempts": 6}  # botocore's name: 5 retries
    assert (cfg.request_checksum_calculation, cfg.response_checksum_validation) == ("when_required",) * 2
    assert client._request_signer._credentials.access_key == "AKIDTEST"
    assert SECRET not in repr(settings)


def test_config_kwargs_win_over_ours_key_by_key(monkeypatch):
    settings = s3_connection(monkeypatch, login="AKIDTEST", password=SECRET, extra={
        "endpoint_url": "http://127.0.0.1:9",
        "config_kwargs": {"connect_timeout": 7, "retries": {"max_attempts": 9},
                          "s3": {"use_accelerate_endpoint": False}, "response_checksum_validation": "when_supported"},
    })
    cfg = storage.make_client(settings).meta.config
    assert cfg.connect_timeout == 7
    assert cfg.retries == {"mode": "standard", "total_max_attempts": 10}
    assert cfg.s3 == {"addressing_style": "path", "use_accelerate_endpoint": False}
    assert cfg.response_checksum_validation == "when_supported"
    assert cfg.request_checksum_calculation == "when_required"


def test_no_endpoint_means_aws_with_automatic_addressing(monkeypatch):
    settings = s3_connection(monkeypatch, login="AKIDTEST", password=SECRET, extra={"region_name": "eu-west-1"})
    client = storage.make_client(settings)
    assert client.meta.config.s3 == {"addressing_style": "auto"}
    assert client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"


def test_service_config_endpoint_applies_to_s3(monkeypatch):
    settings = s3_connection(monkeypatch, login="AKIDTEST", password=SECRET,
                             extra={"service_config": {"s3": {"endpoint_url": "http://127.0.0.1:8"}}})
    client = storage.make_client(settings)
    assert client.meta.endpoint_url == "http://127.0.0.1:8"
    assert client.meta.config.s3 == {"addressing_style": "path"}


def test_profile_name_gives_the_profiles_credentials_and_region(monkeypatch, tmp_path):
    (tmp_path / "aws-credentials").write_text(f"[exporter]\naws_access_key_id = AKIDPROFILE\n"
                                              f"aws_secret_access_key = {SECRET}\n")
    (tmp_path / "aws-config").write_text("[profile exporter]\nregion = ap-southeast-2\n")
    settings = s3_connection(monkeypatch, extra={"profile_name": "exporter", "key_secret": "k" * 32})
    client = storage.make_client(settings)
    assert client.meta.region_name == "ap-southeast-2"
    assert client._request_signer._credentials.access_key == "AKIDPROFILE"


def test_a_missing_profile_is_a_storage_error_naming_the_connection(monkeypatch):
    settings = s3_connection(monkeypatch, password=SECRET, extra={"profile_name": "nowhere"})
    with pytest.raises(storage.StorageError) as failure:
        storage.make_client(settings)
    assert "portability_s3" in str(failure.value) and "profile_name" in str(failure.value)
    assert SECRET not in str(failure.value)


class FakeSts:
    """An STS endpoint that answers AssumeRole with fixed credentials and remembers the requests."""

    def __init__(self):
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                fake.requests.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
                expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
                body = f"""<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
<Credentials><AccessKeyId>ASIAASSUMED</AccessKeyId><SecretAccessKey>assumed-secret</SecretAccessKey>
<SessionToken>assumed-token</SessionToken><Expiration>{expires}</Expiration></Credentials>
<AssumedRoleUser><AssumedRoleId>AROA:x</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/exporter/x</Arn>
</AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</AssumeRoleResponse>""".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_role_arn_is_assumed_once_per_process_and_connection(monkeypatch):
    sts = FakeSts()
    try:
        settings = s3_connection(monkeypatch, login="AKIDBASE", password=SECRET, extra={
            "endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1",
            "role_arn": "arn:aws:iam::123456789012:role/exporter",
            "assume_role_kwargs": {"DurationSeconds": 3600},
            "service_config": {"sts": {"endpoint_url": sts.endpoint}},
        })
        clients = [storage.make_client(settings), storage.make_client(settings, create_only=True)]
        for client in clients:
            credentials = client._request_signer._credentials.get_frozen_credentials()
            assert (credentials.access_key, credentials.token) == ("ASIAASSUMED", "assumed-token")
        assert len(sts.requests) == 1, "one session per process and connection, not one per client"
        assert "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fexporter" in sts.requests[0]
        assert "DurationSeconds=3600" in sts.requests[0]
    finally:
        sts.server.shutdown()


def test_clients_share_one_session_until_the_connection_changes(monkeypatch):
    extra = {"endpoint_url": "http://127.0.0.1:9"}
    settings = s3_connection(monkeypatch, login="AKIDTEST", password=SECRET, extra=extra)
    first = storage._S3Clients.of(settings.connection)
    assert storage._S3Clients.of(config.storage_settings().connection) is first
    assert storage.make_client(settings) is not storage.make_client(settings)
    rotated = s3_connection(monkeypatch, login="AKIDTEST", password=SECRET + "2", extra=extra)
    assert storage._S3Clients.of(rotated.connection) is not first
    assert storage.make_client(rotated)._request_signer._credentials.secret_key == SECRET + "2"


class Sent(Exception):
    pass


def test_create_only_clients_refuse_overwrites(monkeypatch):
    settings = s3_connection(monkeypatch, login="AKIDTEST", password=SECRET, extra={"endpoint_url": "http://127.0.0.1:9"})

    def stop(request, **_):
        raise Sent(request.headers.get("If-None-Match"))

    for create_only, expected in ((False, None), (True, b"*")):
        client = storage.make_client(settings, create_only=create_only)
        client.meta.events.register("before-send.s3.PutObject", stop)
        with pytest.raises(Sent) as sent:
            client.put_object(Bucket="b", Key="k", Body=b"x")
        assert sent.value.args[0] == expected


def test_presigned_links_expire_and_show_no_secret_key(monkeypatch):
    settings = s3_connection(monkeypatch, login="AKIDTEST", password=SECRET, extra={"endpoint_url": "http://127.0.0.1:9"})
    url = storage.ObjectStore(settings).presigned_get("exports-us", "exports/a.zip", expires_in_seconds=600,
                                                      filename="a.zip")
    assert url.startswith("http://127.0.0.1:9/exports-us/exports/a.zip?")
    assert "X-Amz-Expires=600" in url and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    assert SECRET not in url


def test_key_secret_is_the_extra_or_the_secret_key(monkeypatch):
    assert s3_connection(monkeypatch, login="A", password=SECRET).key_secret == SECRET.encode()
    assert s3_connection(monkeypatch, login="A", password=SECRET, extra={"key_secret": "k1"}).key_secret == b"k1"
    with pytest.raises(config.ConfigurationError, match="key_secret"):
        s3_connection(monkeypatch, extra={"role_arn": "arn:aws:iam::123456789012:role/x"})


def postgres(monkeypatch, conn_id: str = "portability_source", **fields) -> str:
    fields = {"conn_type": "postgres", "host": "db.internal", "login": "exporter", "password": SECRET,
              "schema": "esp", **fields}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
    return config.source_settings().conninfo


def test_postgres_extras_reach_the_conninfo_as_postgres_hook_passes_them(monkeypatch):
    from psycopg.conninfo import conninfo_to_dict

    conninfo = postgres(monkeypatch, port=6432, extra={
        "sslmode": "verify-full", "sslrootcert": "/etc/ca.pem", "sslcert": "/etc/c.pem", "sslkey": "/etc/c.key",
        "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 5,
        "keepalives_count": 3, "application_name": "exporter", "options": "-c statement_timeout=0",
        "target_session_attrs": "read-write",
        # the hook's own, never libpq's
        "cursor": "dictcursor", "sqlalchemy_scheme": "postgresql", "sqlalchemy_query": {"a": "b"},
        "aws_conn_id": "aws_default", "redshift": False, "cluster-identifier": "c", "workgroup-name": "w",
    })
    assert conninfo_to_dict(conninfo) == {
        "host": "db.internal", "port": "6432", "dbname": "esp", "user": "exporter", "password": SECRET,
        "sslmode": "verify-full", "sslrootcert": "/etc/ca.pem", "sslcert": "/etc/c.pem", "sslkey": "/etc/c.key",
        "connect_timeout": "10", "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "5",
        "keepalives_count": "3", "application_name": "exporter", "options": "-c statement_timeout=0",
        "target_session_attrs": "read-write",
    }
    assert SECRET not in repr(config.source_settings())


def test_postgres_defaults_when_the_connection_leaves_them_out(monkeypatch):
    from psycopg.conninfo import conninfo_to_dict

    monkeypatch.setenv("AIRFLOW_CONN_PORTABILITY_STATE", json.dumps({"conn_type": "postgres", "login": "p"}))
    assert conninfo_to_dict(config.state_settings().conninfo) == {
        "host": "localhost", "port": "5432", "dbname": "postgres", "user": "p"}


def test_an_extra_libpq_does_not_know_is_refused_without_the_password(monkeypatch):
    with pytest.raises(config.ConfigurationError) as failure:
        postgres(monkeypatch, extra={"sslmod": "require"})
    assert "portability_source" in str(failure.value) and "sslmod" in str(failure.value)
    assert SECRET not in str(failure.value)


def test_iam_extra_gets_an_rds_token_through_the_aws_connection(monkeypatch):
    from psycopg.conninfo import conninfo_to_dict

    monkeypatch.setenv("AIRFLOW_CONN_RDS_AUTH", json.dumps({
        "conn_type": "aws", "login": "AKIDRDS", "password": "rds-secret", "extra": {"region_name": "eu-west-1"}}))
    params = conninfo_to_dict(postgres(monkeypatch, password=None, extra={"iam": True, "aws_conn_id": "rds_auth"}))
    assert params["user"] == "exporter" and params["port"] == "5432"
    assert params["password"].startswith("db.internal:5432/?Action=connect&DBUser=exporter")
    assert "X-Amz-Credential=AKIDRDS" in params["password"]
    assert "iam" not in params and "aws_conn_id" not in params


@pytest.mark.e2e  # the only test here that needs a server: the embedded S3
def test_a_presigned_link_from_the_hooks_client_works_on_the_embedded_s3_then_expires(store):
    import time
    import urllib.error
    import urllib.request

    bucket = store.settings.bucket_for("us")
    store.put_bytes(bucket, "tests/presigned.txt", b"hello", content_type="text/plain")
    url = store.presigned_get(bucket, "tests/presigned.txt", expires_in_seconds=2, filename="presigned.txt")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"hello"
        assert response.headers["Content-Disposition"] == 'attachment; filename="presigned.txt"'
    time.sleep(4)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 403
    store.delete(bucket, "tests/presigned.txt")
