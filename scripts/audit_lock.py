"""`make audit`: pip-audit over the hashed pins of the lock files, telling a vulnerable pin from
an advisory service that could not answer.

pip-audit's own command line exits 1 both for a finding and for a network failure, and with
the PyPI service it counts a version the service answers 404 for as "skipped" and exits 0. Here:

- exit 1: some pinned version has a known advisory (each is printed with its fix versions), or
  the lock cannot be read (a pin without a hash, a broken file): `make lint` fails;
- exit 0 with a WARNING: the service could not be reached, or did not know (some of) the pins,
  so those were not audited (CI without access to the service must not fail for that);
- exit 0: every pin was audited and none has a known advisory (`--ignore-vuln ID` leaves out
  an advisory accepted on purpose).

The pins are audited as written (no resolution, no pip run), with the markers evaluated for
this interpreter.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests
from pip_audit._audit import Auditor
from pip_audit._dependency_source import DependencySourceError, RequirementSource
from pip_audit._service import (
    OsvService,
    PyPIService,
    ResolvedDependency,
    ServiceError,
    SkippedDependency,
    VulnerabilityService,
)

EXIT_CLEAN = 0
EXIT_FAIL = 1


@dataclass(frozen=True, slots=True)
class Finding:
    package: str
    version: str
    advisory: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]
    description: str


@dataclass(slots=True)
class AuditReport:
    audited: int = 0
    findings: list[Finding] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """`name: reason` of each pin the service did not answer for."""
    unreachable: str | None = None
    """Why the service could not be asked, when it could not."""
    error: str | None = None
    """Why the lock files could not be read."""

    def exit_code(self) -> int:
        if self.findings or self.error is not None:
            return EXIT_FAIL
        return EXIT_CLEAN

    def lines(self) -> list[str]:
        """What `make audit` prints, one line each."""
        out: list[str] = []
        if self.error is not None:
            out.append(f"audit: ERROR: the lock files cannot be audited: {self.error}")
        for f in self.findings:
            fixed = ", ".join(f.fix_versions) or "no fixed release yet"
            also = f" ({', '.join(f.aliases)})" if f.aliases else ""
            out.append(
                f"audit: FINDING {f.package}=={f.version}: {f.advisory}{also}; fixed in {fixed}"
            )
            if f.description.strip():
                out.append(f"    {f.description.strip().splitlines()[0]}")
        if self.unreachable is not None:
            out.append(
                "audit: WARNING: the advisory service could not be reached, so "
                f"{'the remaining pins were' if self.audited else 'the lock was'} NOT audited: "
                f"{self.unreachable}"
            )
        if self.skipped:
            known = "none" if not self.audited else f"only {self.audited}"
            out.append(
                f"audit: WARNING: the advisory service knew {known} of the pins; "
                f"{len(self.skipped)} NOT audited (first: {self.skipped[0]})"
            )
        if self.error is None and not self.findings and self.audited:
            of_all = " of the pins" if self.skipped or self.unreachable else ""
            out.append(f"audit: {self.audited}{of_all} audited, no known advisory")
        return out


def audit(
    lock_files: Sequence[Path], service: VulnerabilityService, ignore: Iterable[str] = ()
) -> AuditReport:
    """Ask `service` about every pin of `lock_files` (which must carry hashes)."""
    ignored = set(ignore)
    report = AuditReport()
    source = RequirementSource(list(lock_files), require_hashes=True, disable_pip=True)
    try:
        # Read every pin first: a broken lock is an error even when the service is down.
        list(source.collect())
    except DependencySourceError as exc:
        report.error = str(exc)
        return report
    try:
        for dependency, vulns in Auditor(service).audit(source):
            if isinstance(dependency, SkippedDependency):
                report.skipped.append(f"{dependency.name}: {dependency.skip_reason}")
                continue
            assert isinstance(dependency, ResolvedDependency)
            report.audited += 1
            for vuln in vulns:
                if vuln.has_any_id(ignored):
                    continue
                report.findings.append(
                    Finding(
                        package=dependency.canonical_name,
                        version=str(dependency.version),
                        advisory=vuln.id,
                        aliases=tuple(sorted(vuln.aliases)),
                        fix_versions=tuple(str(v) for v in vuln.fix_versions),
                        description=vuln.description,
                    )
                )
    except (ServiceError, requests.RequestException) as exc:
        # pip-audit wraps only some network failures in its ConnectionError (a refused
        # connection or an unknown host comes out of requests as it is).
        report.unreachable = f"{type(exc).__name__}: {exc}"
    return report


def _service(
    name: str, timeout: int, osv_url: str | None, cache_dir: Path | None
) -> VulnerabilityService:
    if name == "osv":
        return OsvService(
            cache_dir=cache_dir, timeout=timeout, osv_url=osv_url or OsvService.DEFAULT_OSV_URL
        )
    return PyPIService(cache_dir=cache_dir, timeout=timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock_files", nargs="+", type=Path)
    parser.add_argument("--service", choices=["pypi", "osv"], default="pypi")
    parser.add_argument("--osv-url", default=None, help="another OSV API endpoint")
    parser.add_argument("--timeout", type=int, default=15, help="seconds per request")
    parser.add_argument("--cache-dir", type=Path, default=None, help="for the service's answers")
    parser.add_argument(
        "--ignore-vuln",
        action="append",
        default=[],
        metavar="ID",
        help="an advisory accepted on purpose (say why in docs/security.md)",
    )
    args = parser.parse_args(argv)
    service = _service(args.service, args.timeout, args.osv_url, args.cache_dir)
    report = audit(args.lock_files, service, args.ignore_vuln)
    for line in report.lines():
        print(line, file=sys.stderr if "WARNING" in line or "ERROR" in line else sys.stdout)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())
