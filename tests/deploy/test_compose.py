"""deploy/compose.yaml: valid against the Compose Specification's JSON schema (vendored in
data/, see data/README.md; there is no Docker engine here), and the properties the deployment
relies on: healthchecks and start-up order, `gateway migrate` once before the gateways, the
internal listener scraped by Prometheus, secrets as files and never as environment, the image
built from the repository's Dockerfile without development keys, PostgreSQL archiving as
documented; and its entrypoint script (deploy/gateway/with-secrets.sh) run for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
GATEWAYS = ("gateway-a", "gateway-b")
INTERNAL_PORT = "9091"
SECRET_WORDS = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|PASSPHRASE", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the `<<:` merges
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    validator = jsonschema_rs.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}"
              for e in validator.iter_errors(compose)]  # fmt: skip
    assert errors == []


def test_the_schema_catches_what_it_should() -> None:
    """The vendored schema is the real one: it refuses an unknown service key and a bad
    depends_on condition."""
    validator = jsonschema_rs.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert validator.is_valid({"services": {"a": {"image": "x"}}})
    assert not validator.is_valid({"services": {"a": {"image": "x", "helthcheck": {}}}})
    bad_condition = {"services": {"a": {"depends_on": {"b": {"condition": "service_ready"}}}}}
    assert not validator.is_valid(bad_condition)


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if service.get("restart") == "no":  # one-shot: migrate, backup
            continue
        check = service.get("healthcheck", {})
        assert not check.get("disable") and check.get("test"), name


def test_start_up_order(compose: dict[str, Any]) -> None:
    svc = services(compose)
    migrate = svc["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in GATEWAYS:
        gw = svc[name]
        assert gw["command"] == ["serve"], name
        assert gw["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
        assert gw["environment"]["GATEWAY_MIGRATE_ON_START"] == "false", name
        assert "readyz" in " ".join(gw["healthcheck"]["test"]), name
    assert svc["grafana"]["depends_on"]["prometheus"] == {"condition": "service_healthy"}


def test_prometheus_scrapes_each_gateway_on_its_internal_port(compose: dict[str, Any]) -> None:
    svc = services(compose)
    for name in GATEWAYS:
        env = svc[name]["environment"]
        assert env["GATEWAY_INTERNAL_PORT"] == INTERNAL_PORT
        assert env["GATEWAY_INTERNAL_HOST"] == "0.0.0.0"
        assert "PROMETHEUS_MULTIPROC_DIR" not in env  # one process per container
        # the internal port is published on the host's loopback only
        internal = [p for p in svc[name]["ports"] if p.endswith(f":{INTERNAL_PORT}")]
        assert internal and all(p.startswith("127.0.0.1:") for p in internal), name
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "gateway")
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert sorted(targets) == [f"{name}:{INTERNAL_PORT}" for name in GATEWAYS]
    mounted = {c["target"] for c in svc["prometheus"]["configs"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= mounted


def _mount_sources(service: dict[str, Any], compose: dict[str, Any]) -> list[str]:
    sources = [v.split(":", 1)[0] for v in service.get("volumes", []) if isinstance(v, str)]
    for kind in ("configs", "secrets"):
        for ref in service.get(kind, []):
            name = ref if isinstance(ref, str) else ref["source"]
            sources.append(compose[kind][name]["file"])
    return sources


def test_secrets_are_files_never_environment(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for variable, value in (service.get("environment") or {}).items():
            if SECRET_WORDS.search(variable):
                assert variable.endswith("__FILE") or variable.endswith("_FILE"), (name, variable)
                assert str(value).startswith("/run/secrets/"), (name, variable)
    declared = compose["secrets"]
    used = {ref if isinstance(ref, str) else ref["source"]
            for service in services(compose).values() for ref in service.get("secrets", [])}  # fmt: skip
    assert used == set(declared)
    for secret in declared.values():  # kept out of git by deploy/.gitignore
        assert secret["file"].startswith("./secrets/"), secret
    assert "/secrets/" in (DEPLOY / ".gitignore").read_text().split()
    example = (DEPLOY / "gateway.env.example").read_text()
    assigned = re.findall(r"^([A-Z0-9_]+)=", example, re.MULTILINE)
    assert assigned and not [v for v in assigned if SECRET_WORDS.search(v)]
    gateway_secrets = {ref["target"] for ref in services(compose)["gateway-a"]["secrets"]
                       if isinstance(ref, dict) and "target" in ref}  # fmt: skip
    assert {"/run/secrets/env/GATEWAY_MASTER_KEY", "/run/secrets/env/GATEWAY_ADMIN_TOKEN"} <= (
        gateway_secrets
    )


def test_gateway_image_is_the_repository_dockerfile_without_development_keys(
    compose: dict[str, Any],
) -> None:
    svc = services(compose)
    for name in (*GATEWAYS, "migrate"):
        build = svc[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
        sources = _mount_sources(svc[name], compose)
        assert not [s for s in sources if "config/keys" in s], name
        routing = next(c for c in svc[name]["configs"] if c["target"] == "/run/config/routing.yaml")
        assert compose["configs"][routing["source"]]["file"] == (
            "../config/routing.production.example.yaml"
        )
        assert svc[name]["environment"]["GATEWAY_ROUTING_FILE"] == "/run/config/routing.yaml"
        assert "GATEWAY_ALLOW_DEV_KEYS" not in svc[name]["environment"]
        assert "GATEWAY_SIMULATORS" not in svc[name]["environment"]


def test_files_the_compose_file_mounts_are_in_the_repository(compose: dict[str, Any]) -> None:
    """Everything but the secrets (the operator's) and the production routing file (added to
    config/ by the supply-chain work, p1/supply)."""
    for kind in ("configs",):
        for name, entry in compose[kind].items():
            path = (DEPLOY / entry["file"]).resolve()
            if path == ROOT / "config" / "routing.production.example.yaml":
                continue
            assert path.is_file(), f"{kind}.{name}: {entry['file']}"
    for service in services(compose).values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


def test_channel_key_secrets_are_where_the_production_routing_file_reads_them(
    compose: dict[str, Any],
) -> None:
    routing = ROOT / "config" / "routing.production.example.yaml"
    if not routing.exists():
        pytest.skip("config/routing.production.example.yaml arrives with p1/supply")
    text = routing.read_text()
    key_paths = set(re.findall(r"(/run/secrets/[\w./-]+)", text.split("channels:", 1)[1]))
    targets = {ref["target"] for ref in services(compose)["gateway-a"]["secrets"]
               if isinstance(ref, dict) and "target" in ref}  # fmt: skip
    assert sorted(key_paths - targets) == []
    secret_variables = {v for v in re.findall(r"\$\{(\w+)\}", text) if SECRET_WORDS.search(v)}
    assert {f"/run/secrets/env/{v}" for v in secret_variables} <= targets


def _conf_settings(text: str) -> dict[str, str]:
    """`key = value` lines of a postgresql.conf (no comment after a value)."""
    settings = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip().strip("'")
    return settings


def test_postgres_archiving_is_the_documented_one(compose: dict[str, Any]) -> None:
    command = services(compose)["postgres"]["command"]
    flags = dict(arg.split("=", 1) for arg in command[2::2])
    assert command[1::2] == ["-c"] * len(flags)
    documented = _conf_settings((DEPLOY / "backup" / "postgresql-archiving.conf").read_text())
    assert flags == documented
    assert documented["archive_mode"] == "on"
    assert "%p" in documented["archive_command"] and "%f" in documented["archive_command"]


def test_with_secrets_exports_the_secret_files_and_runs_the_gateway(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    (secrets / "env").mkdir(parents=True)
    (secrets / "env" / "GATEWAY_MASTER_KEY").write_text("bWFzdGVy\n")
    (secrets / "env" / "WECHAT_MAIN_APIV3_KEY").write_text("v3key")
    (secrets / "postgres_password").write_text("pgpass\n")
    (secrets / "redis_password").write_text("redispass\n")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    gateway = fake_bin / "gateway"  # stands in for the image's `gateway`: shows what it got
    gateway.write_text('#!/bin/sh\necho "args=$*"\nenv | grep -E "^(GATEWAY_|WECHAT_)" | sort\n')
    gateway.chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "SECRETS_DIR": str(secrets),
           "POSTGRES_HOST": "db", "POSTGRES_USER": "gw", "POSTGRES_DB": "pay"}  # fmt: skip
    script = DEPLOY / "gateway" / "with-secrets.sh"
    run = subprocess.run(["sh", str(script), "serve"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "args=serve"
    assert set(lines[1:]) == {
        "GATEWAY_MASTER_KEY=bWFzdGVy",
        "WECHAT_MAIN_APIV3_KEY=v3key",
        "GATEWAY_DATABASE_URL=postgresql://gw:pgpass@db:5432/pay",
        "GATEWAY_REDIS_URL=redis://:redispass@redis:6379/0",
    }
    # a URL given explicitly wins over the one built from the password
    env["GATEWAY_DATABASE_URL"] = "postgresql://elsewhere/x"
    run = subprocess.run(["sh", str(script), "migrate"], env=env, capture_output=True, text=True)
    assert "GATEWAY_DATABASE_URL=postgresql://elsewhere/x" in run.stdout.splitlines()
    assert os.access(script, os.X_OK)
