"""Operators' roles and the one permission table (API.md §4.1): each permission names the least
role that holds it, and every role includes the ones below it (`viewer` < `support` <
`finance` < `admin`). Every `/admin/…` endpoint names its permission (`gateway.api.admin`), and
so will every console page and action; nothing else decides who may do what. Pure.

Some permissions have no endpoint yet: they are the console's and the next issue's to use
(`RESERVED`), so that their roles are settled here, in the same table, before they are built."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class Role(enum.StrEnum):
    """An operator's role; each includes every role before it."""

    VIEWER = "viewer"
    SUPPORT = "support"
    FINANCE = "finance"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def includes(self, other: Role) -> bool:
        """Whether this role holds everything `other` holds."""
        return self.rank >= other.rank


_RANKS = {role: rank for rank, role in enumerate(Role)}


class Permission(enum.StrEnum):
    # viewer: read everything but secrets and the audit log
    PAYMENTS_READ = "payments.read"
    REFUNDS_READ = "refunds.read"
    MERCHANTS_READ = "merchants.read"
    CHANNELS_READ = "channels.read"
    ROUTING_READ = "routing.read"
    DELIVERIES_READ = "deliveries.read"
    RECONCILIATION_READ = "reconciliation.read"
    # support: act for merchants whose payers or callbacks are stuck
    DELIVERIES_RETRY = "deliveries.retry"
    PAYMENTS_SYNC = "payments.sync"
    PAYMENTS_CLOSE = "payments.close"
    # finance: money out and the books
    REFUNDS_APPROVE = "refunds.approve"
    RECONCILIATION_RUN = "reconciliation.run"
    SETTLEMENT_READ = "settlement.read"
    # admin: merchants and their keys, the channels in force, operators, the audit log
    MERCHANTS_REVIEW = "merchants.review"
    MERCHANT_KEYS_MANAGE = "merchants.keys"
    ROUTING_RELOAD = "routing.reload"
    CHANNELS_RESET = "channels.reset"
    OPERATORS_MANAGE = "operators.manage"
    AUDIT_READ = "audit.read"


PERMISSIONS: Mapping[Permission, Role] = MappingProxyType(
    {
        Permission.PAYMENTS_READ: Role.VIEWER,
        Permission.REFUNDS_READ: Role.VIEWER,
        Permission.MERCHANTS_READ: Role.VIEWER,
        Permission.CHANNELS_READ: Role.VIEWER,
        Permission.ROUTING_READ: Role.VIEWER,
        Permission.DELIVERIES_READ: Role.VIEWER,
        Permission.RECONCILIATION_READ: Role.VIEWER,
        Permission.DELIVERIES_RETRY: Role.SUPPORT,
        Permission.PAYMENTS_SYNC: Role.SUPPORT,
        Permission.PAYMENTS_CLOSE: Role.SUPPORT,
        Permission.REFUNDS_APPROVE: Role.FINANCE,
        Permission.RECONCILIATION_RUN: Role.FINANCE,
        Permission.SETTLEMENT_READ: Role.FINANCE,
        Permission.MERCHANTS_REVIEW: Role.ADMIN,
        Permission.MERCHANT_KEYS_MANAGE: Role.ADMIN,
        Permission.ROUTING_RELOAD: Role.ADMIN,
        Permission.CHANNELS_RESET: Role.ADMIN,
        Permission.OPERATORS_MANAGE: Role.ADMIN,
        Permission.AUDIT_READ: Role.ADMIN,
    }
)
"""Permission -> the least role that holds it: the one table."""

RESERVED: frozenset[Permission] = frozenset(
    {
        Permission.PAYMENTS_SYNC,  # re-query and close: their audit entry belongs in the
        Permission.PAYMENTS_CLOSE,  # payment's own transaction (gateway/services/payments.py)
        Permission.REFUNDS_APPROVE,  # refund approval (issue 15)
        Permission.RECONCILIATION_RUN,  # `gateway reconcile` is the command line's today
        Permission.MERCHANTS_REVIEW,  # merchant applications and status changes (issue 15)
        Permission.OPERATORS_MANAGE,  # `gateway operator …` today; the console's later
    }
)
"""Permissions no `/admin/…` endpoint uses yet (the console and issue 15 will)."""


def least_role(permission: Permission) -> Role:
    return PERMISSIONS[permission]


def allows(role: Role, permission: Permission) -> bool:
    """Whether `role` holds `permission`."""
    return role.includes(PERMISSIONS[permission])


def permissions_of(role: Role) -> frozenset[Permission]:
    """Everything `role` may do (the console shows only these)."""
    return frozenset(p for p in PERMISSIONS if allows(role, p))


class IdentityKind(enum.StrEnum):
    OPERATOR = "operator"
    """A person with an account, signed in to the console."""
    TOKEN = "token"  # noqa: S105 - a kind of identity, not a secret
    """A service with a token (`gateway operator token create`)."""
    ADMIN_TOKEN = "admin_token"  # noqa: S105 - a kind of identity
    """GATEWAY_ADMIN_TOKEN: the `admin-token` identity."""


ADMIN_TOKEN_ACTOR = "admin-token"  # noqa: S105 - its name in the audit log


@dataclass(frozen=True, slots=True)
class Identity:
    """Who makes an `/admin/…` request (or a console action), and with which role."""

    kind: IdentityKind
    id: str
    """The operator's or token's id (`admin-token` for GATEWAY_ADMIN_TOKEN)."""
    actor: str
    """As the audit log names it: the operator's email, `token:<id>` or `admin-token`."""
    role: Role
    session_id: str | None = None
    """The console session it came with, if any (its CSRF token guards changes)."""

    def may(self, permission: Permission) -> bool:
        return allows(self.role, permission)
