"""The one permission table: roles include the ones before them, every permission has a role,
each role holds exactly what API.md §4.1 gives it, and the schema allows exactly the roles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.domain.permissions import (
    PERMISSIONS,
    RESERVED,
    Permission,
    Role,
    allows,
    least_role,
    permissions_of,
)

MIGRATIONS = Path(__file__).resolve().parents[3] / "gateway/store/migrations"


def test_roles_are_ordered_viewer_support_finance_admin() -> None:
    assert list(Role) == [Role.VIEWER, Role.SUPPORT, Role.FINANCE, Role.ADMIN]
    for lower, higher in zip(list(Role), list(Role)[1:], strict=False):
        assert higher.includes(lower) and not lower.includes(higher)
        assert permissions_of(lower) < permissions_of(higher)  # strictly more each step


def test_every_permission_has_exactly_one_least_role() -> None:
    assert set(PERMISSIONS) == set(Permission)
    assert set(Permission) >= RESERVED


@pytest.mark.parametrize("permission", list(Permission), ids=str)
@pytest.mark.parametrize("role", list(Role), ids=str)
def test_a_role_holds_a_permission_iff_it_includes_the_least_role(
    role: Role, permission: Permission
) -> None:
    assert allows(role, permission) == (role.rank >= least_role(permission).rank)


def test_what_each_role_adds_is_what_the_contract_says() -> None:
    added = {
        role: permissions_of(role)
        - (permissions_of(list(Role)[role.rank - 1]) if role.rank else set())
        for role in Role
    }
    p = Permission
    assert added[Role.VIEWER] == {
        p.PAYMENTS_READ, p.REFUNDS_READ, p.MERCHANTS_READ, p.CHANNELS_READ, p.ROUTING_READ,
        p.DELIVERIES_READ, p.RECONCILIATION_READ,
    }  # fmt: skip
    assert added[Role.SUPPORT] == {p.DELIVERIES_RETRY, p.PAYMENTS_SYNC, p.PAYMENTS_CLOSE}
    assert added[Role.FINANCE] == {p.REFUNDS_APPROVE, p.RECONCILIATION_RUN, p.SETTLEMENT_READ}
    assert added[Role.ADMIN] == {
        p.MERCHANTS_REVIEW, p.MERCHANT_KEYS_MANAGE, p.ROUTING_RELOAD, p.CHANNELS_RESET,
        p.OPERATORS_MANAGE, p.AUDIT_READ,
    }  # fmt: skip


def test_the_next_issue_finds_its_permissions_reserved() -> None:
    assert {Permission.MERCHANTS_REVIEW, Permission.REFUNDS_APPROVE} <= RESERVED
    assert least_role(Permission.REFUNDS_APPROVE) is Role.FINANCE
    assert least_role(Permission.MERCHANTS_REVIEW) is Role.ADMIN


def test_the_schema_allows_exactly_the_roles() -> None:
    sql = (MIGRATIONS / "0009_operators_audit.sql").read_text()
    checks = re.findall(r"CONSTRAINT (\w+)\s+CHECK \(role IN \(([^)]*)\)\)", sql)
    assert [name for name, _ in checks] == ["operators_role_check", "operator_tokens_role_check"]
    for _, values in checks:
        assert re.findall(r"'([^']*)'", values) == [r.value for r in Role]
