"""docker/compose.yaml, checked as far as a machine without a Docker daemon allows.

The file is validated against the Compose Specification's JSON Schema (the copy check-jsonschema ships)
and read as Compose reads it (YAML anchors and merge keys resolved, `${VAR:-default}` interpolated) to
check what a deployment relies on: one executor, one JWT secret and one execution API URL in every Airflow
part, two workers on distinct hosts, the stores, health checks, the pool. Where the Compose CLI is
installed, `docker compose config` checks it too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources

import pytest
import yaml

from tests.helpers import REPO

COMPOSE = REPO / "docker" / "compose.yaml"
# What the `${VAR:?message}` variables are set to for the checks (a user sets them in docker/.env).
REQUIRED = {"AIRFLOW_JWT_SECRET": "a-test-secret"}
AIRFLOW_PARTS = {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                 "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer",
                 "airflow-worker-1": "celery worker", "airflow-worker-2": "celery worker"}
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def interpolate(value, variables: dict[str, str]):
    """Compose's interpolation of every string in `value`: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        if variables.get(name):
            return variables[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name} is required: {arg}")
        return arg if op else ""

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # anchors and `<<` merge keys resolved, as Compose does


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, REQUIRED)


def airflow_env(compose: dict, service: str) -> dict[str, str]:
    return compose["services"][service]["environment"]


def test_the_file_follows_the_compose_specification(raw):
    import jsonschema

    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)  # the draft its $schema names (2020-12)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_a_missing_jwt_secret_is_refused_with_a_message(raw):
    with pytest.raises(KeyError, match="AIRFLOW_JWT_SECRET is required: set AIRFLOW_JWT_SECRET"):
        interpolate(raw, {})


def test_every_airflow_part_uses_celery_and_the_same_secret_and_execution_api(compose):
    parts = {name: service for name, service in compose["services"].items() if "build" in service}
    assert set(AIRFLOW_PARTS) | {"airflow-init"} == set(parts)
    for name, command in AIRFLOW_PARTS.items():
        assert parts[name]["command"] == command
    api_port = compose["services"]["airflow-apiserver"]["ports"][0].split(":")[-1]
    for name, service in parts.items():
        env = service["environment"]
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}, name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:") or \
            env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:@redis:"), name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("@")[1].startswith("postgres/"), name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == REQUIRED["AIRFLOW_JWT_SECRET"], name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://airflow-apiserver:{api_port}/execution/", name
    assert (REPO / "docker" / "Dockerfile").is_file()


def test_two_workers_on_two_hosts(compose):
    workers = [compose["services"][name] for name in ("airflow-worker-1", "airflow-worker-2")]
    assert [worker["hostname"] for worker in workers] == ["airflow-worker-1", "airflow-worker-2"]
    assert workers[0]["healthcheck"] == workers[1]["healthcheck"]
    assert all(worker["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy" for worker in workers)


def test_the_stores_and_the_mail_catcher(compose):
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["seaweedfs"]["image"].startswith("chrislusf/seaweedfs")
    assert "-s3 " in services["seaweedfs"]["command"] and "-s3.config=" in services["seaweedfs"]["command"]
    assert services["mailpit"]["image"].startswith("axllent/mailpit")
    created = compose["configs"]["postgres-databases"]["content"]
    assert "CREATE DATABASE portability;" in created and "CREATE DATABASE esp;" in created

    env = airflow_env(compose, "airflow-worker-1")
    s3 = json.loads(env["AIRFLOW_CONN_PORTABILITY_S3"])
    identities = json.loads(compose["configs"]["seaweedfs-identities"]["content"])["identities"][0]["credentials"]
    assert [{"accessKey": s3["login"], "secretKey": s3["password"]}] == identities
    assert s3["extra"]["endpoint_url"] == "http://seaweedfs:8333"
    smtp = json.loads(env["AIRFLOW_CONN_SMTP_DEFAULT"])
    assert (smtp["host"], smtp["port"]) == ("mailpit", 1025)
    assert env["AIRFLOW_CONN_PORTABILITY_STATE"].endswith("@postgres:5432/portability")
    assert env["AIRFLOW_CONN_PORTABILITY_SOURCE"].endswith("@postgres:5432/esp")
    assert interpolate(COMPOSE_SOURCE, {"PORTABILITY_SOURCE_URI": "postgresql://r@esp.internal/esp"}) \
        == "postgresql://r@esp.internal/esp"
    assert set(json.loads(env["PORTABILITY_BUCKETS"])) == {"us", "eu"}


COMPOSE_SOURCE = "${PORTABILITY_SOURCE_URI:-postgresql://airflow:airflow@postgres:5432/esp}"


def test_every_long_running_service_has_a_health_check_and_waits_for_its_stores(compose):
    services = compose["services"]
    for name, service in services.items():
        if name == "airflow-init":
            assert service["restart"] == "no"
            continue
        assert service["healthcheck"]["test"], name
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on an unknown service {needed}"
    for name in AIRFLOW_PARTS:
        needs = services[name]["depends_on"]
        assert needs["airflow-init"]["condition"] == "service_completed_successfully", name
        assert {needs[store]["condition"] for store in ("postgres", "redis", "seaweedfs")} == {"service_healthy"}


def test_init_creates_the_source_pool_and_the_buckets(compose):
    init = compose["services"]["airflow-init"]
    script = init["command"][-1]
    assert "airflow db migrate" in script
    assert 'airflow pools set portability_source "${SOURCE_POOL_SLOTS}"' in script  # $$ is Compose's escaped $
    assert init["environment"]["SOURCE_POOL_SLOTS"] == "2"
    assert "create_bucket" in script
    # The script is valid bash, and the Python it feeds through a here-document is valid Python.
    assert subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True).returncode == 0
    python = re.search(r"<<'PY'\n(.*?)^\s*PY$", script, flags=re.S | re.M).group(1)
    compile(python, "airflow-init", "exec")


@pytest.mark.skipif(not shutil.which("docker") or subprocess.run(["docker", "compose", "version"],
                                                                  capture_output=True).returncode != 0,
                    reason="the Docker Compose CLI plugin is not installed on this machine")
def test_docker_compose_config_accepts_it():
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                            env={"PATH": "/usr/bin:/bin:/usr/local/bin", **REQUIRED}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
