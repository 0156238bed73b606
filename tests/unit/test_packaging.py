"""The supply chain, checked statically: the lock files agree with pyproject.toml and `make`
installs from them."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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
