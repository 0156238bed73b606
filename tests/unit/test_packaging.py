"""The supply chain, checked statically: the lock files agree with pyproject.toml, `make`
installs from them, and the Docker image is built from them, from a base pinned by digest,
without the development keys, as a non-root user, reading the production routing example."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from routing.loader import RoutingError, parse_routing

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
LOCKS = ROOT / "requirements"


# ---- lock files ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pin:
    name: str
    version: str
    marker: str | None
    hashes: frozenset[str]


def parse_lock(text: str) -> dict[str, list[Pin]]:
    """`name -> pins` of a requirements file written by `uv pip compile --generate-hashes`
    (one name may be pinned twice under exclusive markers)."""
    pins: dict[str, list[Pin]] = {}
    # Join the backslash-continued lines: one requirement per logical line.
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, *options = re.split(r"\s+--", line)
        requirement = Requirement(head)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"not a pin: {line!r}"
        hashes = frozenset(o.removeprefix("hash=") for o in options if o.startswith("hash="))
        name = canonicalize_name(requirement.name)
        marker = str(requirement.marker) if requirement.marker else None
        pins.setdefault(name, []).append(Pin(name, specifier.version, marker, hashes))
    return pins


def lock_problems(requirements: list[str], pins: dict[str, list[Pin]], lock_name: str) -> list[str]:
    """What is wrong between `requirements` (PEP 508 strings from pyproject.toml) and a lock:
    a requirement not pinned, a pin outside the requirement's range, a pin without hashes."""
    problems: list[str] = []
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{lock_name}: {text!r} is not pinned (run `make lock`)")
            continue
        for pin in pins[name]:
            if not requirement.specifier.contains(Version(pin.version), prereleases=True):
                problems.append(
                    f"{lock_name}: {name}=={pin.version} is outside {text!r} (run `make lock`)"
                )
    for name, versions in pins.items():
        for pin in versions:
            if not pin.hashes or not all(
                re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes
            ):
                problems.append(f"{lock_name}: {name}=={pin.version} has no sha256 hash")
    return problems


def _pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def _lock(name: str) -> dict[str, list[Pin]]:
    return parse_lock((LOCKS / name).read_text())


def _lock_sets() -> dict[str, list[str]]:
    """Each lock file and the pyproject.toml requirements it must satisfy."""
    project = _pyproject()
    runtime = project["project"]["dependencies"]
    extras = project["project"]["optional-dependencies"]
    build = project["build-system"]["requires"]
    return {
        "runtime.txt": runtime + build,
        "embedded.txt": runtime + extras["embedded"] + build,
        "dev.txt": runtime + extras["embedded"] + extras["dev"] + build,
    }


@pytest.mark.parametrize("lock_name", ["runtime.txt", "embedded.txt", "dev.txt"])
def test_each_lock_pins_every_requirement_of_pyproject_within_its_range(lock_name: str) -> None:
    assert lock_problems(_lock_sets()[lock_name], _lock(lock_name), lock_name) == []


def test_the_smaller_locks_pin_the_same_versions_and_hashes_as_dev() -> None:
    dev = _lock("dev.txt")
    for lock_name in ("runtime.txt", "embedded.txt"):
        for name, pins in _lock(lock_name).items():
            assert name in dev, f"{lock_name} pins {name}, dev.txt does not: run `make lock`"
            assert set(pins) <= set(dev[name]), f"{lock_name} and dev.txt differ on {name}"


def test_uv_that_writes_the_locks_is_pinned_with_hashes() -> None:
    (wanted,) = [
        line for line in (LOCKS / "tools.in").read_text().splitlines() if line.startswith("uv")
    ]
    assert re.fullmatch(r"uv==[0-9.]+", wanted)
    assert lock_problems([wanted], _lock("tools.txt"), "tools.txt") == []


def test_the_locks_say_they_come_from_make_lock() -> None:
    for lock_name in ("runtime.txt", "embedded.txt", "dev.txt", "tools.txt"):
        assert "#    make lock\n" in (LOCKS / lock_name).read_text()


def test_the_lock_check_reports_a_missing_dependency_a_pin_out_of_range_and_no_hash() -> None:
    # The checker above is what catches a pyproject.toml edited without `make lock`.
    lock = parse_lock(
        "aiohttp==3.12.13 \\\n    --hash=sha256:" + "a" * 64 + "\n"
        "    # via payment-gateway\n"
        "orjson==3.13.0\n"
        "uvloop==0.23.0 ; sys_platform != 'win32' \\\n    --hash=sha256:" + "b" * 64 + "\n"
    )
    assert lock["uvloop"] == [
        Pin("uvloop", "0.23.0", 'sys_platform != "win32"', lock["uvloop"][0].hashes)
    ]
    problems = lock_problems(
        [
            "aiohttp>=3.14.5",
            "orjson>=3.9.15",
            "jinja2>=3.1",
            "uvloop>=0.20; sys_platform != 'win32'",
        ],
        lock,
        "x.txt",
    )
    assert problems == [
        "x.txt: aiohttp==3.12.13 is outside 'aiohttp>=3.14.5' (run `make lock`)",
        "x.txt: 'jinja2>=3.1' is not pinned (run `make lock`)",
        "x.txt: orjson==3.13.0 has no sha256 hash",
    ]


def test_pyproject_floors_exclude_the_releases_with_known_advisories() -> None:
    # docs/security.md gives the advisory behind each floor; a floor lowered by mistake must
    # fail here. Each version below is a release that one of those advisories covers.
    vulnerable = {
        "aiohttp": "3.14.2",
        "cryptography": "49.0.0",
        "orjson": "3.9.14",
        "uvloop": "0.19.0",
        "pyyaml": "5.3.1",
        "redis": "4.5.3",
        "pydantic": "2.3.0",
        "asyncpg": "0.20.1",
    }
    checked = set()
    for text in _pyproject()["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in vulnerable:
            checked.add(name)
            assert not requirement.specifier.contains(Version(vulnerable[name])), text
    assert checked == set(vulnerable)


# ---- make and CI -----------------------------------------------------------------------------


def _make_dry_run(target: str) -> str:
    """The commands `make TARGET` would run from scratch (-B: as if nothing were installed)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MAKE") and k not in {"AUDIT_ARGS", "LOCK_ARGS"}
    }
    return subprocess.run(
        ["make", "-n", "-B", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_make_install_and_make_run_install_from_the_locks_with_hashes() -> None:
    for target, lock in (("install", "requirements/dev.txt"), ("run", "requirements/embedded.txt")):
        commands = _make_dry_run(target)
        pip_lines = [line for line in commands.splitlines() if " -m pip install" in line]
        assert pip_lines[0].endswith(f"-m pip install --quiet --require-hashes -r {lock}"), commands
        assert pip_lines[1].endswith("--no-deps --no-build-isolation -e ."), commands
        assert len(pip_lines) == 2, commands


def test_make_lint_runs_the_audit_over_the_locks() -> None:
    commands = _make_dry_run("audit")
    assert re.search(
        r"/python scripts/audit_lock\.py +requirements/dev\.txt requirements/tools\.txt\n", commands
    ), commands


def test_ci_runs_make_test() -> None:
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("\nmake test")


# ---- Dockerfile and .dockerignore ------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _build_args() -> dict[str, str]:
    return dict(rest.split("=", 1) for kw, rest in _dockerfile() if kw == "ARG" and "=" in rest)


def test_every_base_image_is_python_3_11_pinned_by_digest() -> None:
    args = _build_args()
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        for kw, rest in _dockerfile()
        if kw == "FROM"
    ]
    assert len(bases) == 2
    for base in bases:
        assert re.fullmatch(r"python:3\.11[\w.-]*@sha256:[0-9a-f]{64}", base), base


def test_the_image_installs_the_runtime_lock_with_hashes_and_the_project_without_deps() -> None:
    runs = [rest for kw, rest in _dockerfile() if kw == "RUN" and "pip install" in rest]
    assert len(runs) == 2, runs
    assert "--require-hashes" in runs[0] and "-r requirements/runtime.txt" in runs[0]
    assert "--no-deps" in runs[1] and "--no-build-isolation" in runs[1]


def test_the_image_copies_no_key_and_reads_the_production_routing_example() -> None:
    copies = [shlex.split(rest) for kw, rest in _dockerfile() if kw == "COPY"]
    sources = [s for c in copies if not c[0].startswith("--from") for s in c[:-1]]
    for source in sources:
        assert not (source.rstrip("/") in {".", "config"} or source.startswith("config/keys")), (
            source
        )
    env = " ".join(rest for kw, rest in _dockerfile() if kw == "ENV")
    routing = re.search(r"GATEWAY_ROUTING_FILE=(\S+)", env)
    assert routing and routing.group(1) == "/app/config/routing.production.example.yaml"
    assert "config/routing.production.example.yaml" in sources
    assert "GATEWAY_CONFIG_DIR=/run/secrets" in env


def test_the_image_runs_as_a_user_other_than_root_with_a_healthcheck() -> None:
    instructions = _dockerfile()
    (user,) = [rest for kw, rest in instructions if kw == "USER"]
    assert user.split(":")[0] not in {"root", "0"}
    keywords = [kw for kw, _ in instructions]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw in {"COPY", "RUN"})
    assert "HEALTHCHECK" in keywords and "/healthz" in dict(instructions)["HEALTHCHECK"]


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per line, as Docker reads .dockerignore: `*` and `?` stay within one
    path segment, `**` spans any number, `!` re-includes, and the last matching line wins."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").lstrip("/"))
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part)
            )
        rules.append((exclude, re.compile(regex)))
    return rules


def _sent_to_docker(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exclude, regex in rules:
        # A line that matches a directory matches everything under it.
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = exclude
    return not excluded


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_key() -> None:
    rules = _dockerignore_rules()
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    sent = {path for path in tracked if _sent_to_docker(path, rules)}
    assert [p for p in tracked if p.startswith("config/keys/")], "no development key to test with"
    assert not [p for p in sent if p.startswith(("config/keys/", "tests/")) or p.endswith(".pem")]
    assert {p for p in sent if p.startswith("config/")} == {
        "config/routing.production.example.yaml",
        "config/risk.yaml",
    }
    copies = [shlex.split(rest) for kw, rest in _dockerfile() if kw == "COPY"]
    for source in (s for c in copies if not c[0].startswith("--from") for s in c[:-1]):
        assert any(p == source or p.startswith(source.rstrip("/") + "/") for p in sent), source
    # What a working tree holds besides the tracked files never goes either.
    for local in (
        "var/master.key",
        "var/pgdata/PG_VERSION",
        ".venv/bin/python",
        "gateway.env",
        "gateway/__pycache__/app.cpython-311.pyc",
        "config/keys/bank/new.pem",
    ):
        assert not _sent_to_docker(local, rules), local


# ---- the production routing example ----------------------------------------------------------

PRODUCTION_ROUTING = ROOT / "config" / "routing.production.example.yaml"
REAL_HOSTS = {
    "bank": re.compile(r"https://[a-z0-9.-]+\.example"),  # placeholder: the bank gives its own
    "wechat": re.compile(r"https://api\.mch\.weixin\.qq\.com"),
    "alipay": re.compile(r"https://openapi\.alipay\.com"),
    "unionpay": re.compile(r"https://gateway\.95516\.com"),
}


def _production_env() -> dict[str, str]:
    names = re.findall(r"\$\{([A-Z0-9_]+)\}", PRODUCTION_ROUTING.read_text())
    return {name: f"value-of-{name}" for name in names}


def test_the_production_example_parses_with_its_variables_set() -> None:
    loaded = parse_routing(PRODUCTION_ROUTING.read_bytes(), PRODUCTION_ROUTING, _production_env())
    development = parse_routing(
        (ROOT / "config" / "routing.yaml").read_bytes(), env={"GATEWAY_PUBLIC_URL": "http://gw"}
    )
    assert set(loaded.config.channels) == set(development.config.channels)
    assert loaded.warnings == ("channels.alipay_legacy: disabled (skipped by every route)",)


def test_the_production_example_needs_its_secrets_from_the_environment() -> None:
    with pytest.raises(RoutingError) as refused:
        parse_routing(PRODUCTION_ROUTING.read_bytes(), PRODUCTION_ROUTING, {})
    assert "environment variable WECHAT_MAIN_APIV3_KEY is not set" in str(refused.value)
    assert "environment variable UNIONPAY_SIGN_KEY_PASSWORD is not set" in str(refused.value)


def test_the_production_example_names_real_hosts_and_mounted_key_files_only() -> None:
    loaded = parse_routing(PRODUCTION_ROUTING.read_bytes(), PRODUCTION_ROUTING, _production_env())
    for name, channel in loaded.config.channels.items():
        config = dict(channel.config)
        assert REAL_HOSTS[channel.adapter].fullmatch(config.pop("base_url")), name
        files = {k: v for k, v in config.items() if k.endswith(("_path", "_key"))}
        assert files, name
        for key, value in files.items():
            if key in {"apiv3_key"}:
                assert value == f"value-of-{name.upper()}_APIV3_KEY"
            else:
                assert value.startswith(f"/run/secrets/{name}/"), (name, key, value)
    unionpay = dict(loaded.config.channels["unionpay_main"].config)
    # Its adapter's defaults name the development set: every one of them is overridden.
    assert {"sign_key_path", "sign_cert_path", "middle_cert_path", "root_cert_path"} <= set(
        unionpay
    )
    assert "keys/" not in PRODUCTION_ROUTING.read_text().replace("/run/secrets/", "")
