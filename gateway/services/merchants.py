"""Merchants and their keys: creation, rotation (two active keys at most), revocation. Given
`audit_as`, each change is written to the audit log in its own transaction (the command line
and the admin API always give it; tests' set-up may not)."""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass

from gateway.auth.secretbox import SecretBox
from gateway.auth.signature import load_public_key
from gateway.domain.errors import InvalidRequest
from gateway.domain.ids import new_id
from gateway.domain.records import KeyType
from gateway.services import audit
from gateway.services.audit import Actor
from gateway.store import merchants as store
from gateway.store.db import Pool

MAX_ACTIVE_KEYS = 2


class MerchantError(InvalidRequest):
    """An operator's command that cannot be done as asked (the command line prints it)."""


@dataclass(frozen=True, slots=True)
class IssuedKey:
    merchant_id: str
    key_id: str
    key_type: str
    secret: str | None

    def as_dict(self) -> dict[str, str]:
        out = {
            "merchant_id": self.merchant_id,
            "key_id": self.key_id,
            "key_type": self.key_type,
        }
        if self.secret is not None:
            out["secret"] = self.secret
        return out


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def _key_material(
    box: SecretBox, key_id: str, key_type: KeyType, public_key_pem: str | None
) -> tuple[bytes | None, str | None, str | None]:
    if key_type is KeyType.HMAC_SHA256:
        if public_key_pem is not None:
            raise MerchantError("an hmac-sha256 key takes no --public-key")
        secret = "sk_" + secrets.token_urlsafe(32)
        return box.seal(secret, key_id), None, secret
    if public_key_pem is None:
        raise MerchantError(f"a {key_type} key needs --public-key (a PEM public key file)")
    try:
        load_public_key(key_type, public_key_pem.encode())
    except ValueError as exc:
        raise MerchantError(str(exc)) from None
    return None, public_key_pem, None


async def create_merchant(
    pool: Pool,
    box: SecretBox,
    name: str,
    key_type: KeyType,
    public_key_pem: str | None,
    *,
    audit_as: Actor | None = None,
) -> tuple[IssuedKey, str]:
    if not name.strip() or len(name) > 128:
        raise MerchantError("--name must be 1 to 128 characters")
    merchant_id = new_id("mch")
    key_id = new_id("key")
    secret_enc, pem, secret = _key_material(box, key_id, key_type, public_key_pem)
    webhook_secret = new_webhook_secret()
    async with pool.acquire() as conn, conn.transaction():
        await store.insert_merchant(conn, merchant_id, name, box.seal(webhook_secret, merchant_id))
        await store.insert_key(conn, key_id, merchant_id, key_type, secret_enc, pem)
        if audit_as is not None:
            await audit.record(
                conn,
                audit_as,
                "merchant.create",
                f"merchant:{merchant_id}",
                after={"name": name, "key_id": key_id, "key_type": key_type.value},
            )
    return IssuedKey(merchant_id, key_id, key_type.value, secret), webhook_secret


async def rotate_key(
    pool: Pool,
    box: SecretBox,
    merchant_id: str,
    key_type: KeyType,
    public_key_pem: str | None,
    *,
    audit_as: Actor | None = None,
) -> IssuedKey:
    key_id = new_id("key")
    secret_enc, pem, secret = _key_material(box, key_id, key_type, public_key_pem)
    async with pool.acquire() as conn, conn.transaction():
        if await store.lock_merchant(conn, merchant_id) is None:
            raise MerchantError(f"no merchant {merchant_id}")
        if await store.count_active_keys(conn, merchant_id) >= MAX_ACTIVE_KEYS:
            raise MerchantError(
                f"merchant {merchant_id} already has {MAX_ACTIVE_KEYS} active keys;"
                " revoke one first (gateway merchant revoke-key --key-id …)"
            )
        await store.insert_key(conn, key_id, merchant_id, key_type, secret_enc, pem)
        if audit_as is not None:
            await audit.record(
                conn,
                audit_as,
                "merchant.key_rotate",
                f"merchant:{merchant_id}",
                after={"key_id": key_id, "key_type": key_type.value},
            )
    return IssuedKey(merchant_id, key_id, key_type.value, secret)


async def revoke_key(
    pool: Pool, key_id: str, *, audit_as: Actor | None = None, reason: str | None = None
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if not await store.revoke_key(conn, key_id):
            raise MerchantError(f"no active key {key_id}")
        if audit_as is not None:
            await audit.record(
                conn,
                audit_as,
                "merchant.key_revoke",
                f"key:{key_id}",
                before={"status": "active"},
                after={"status": "revoked"},
                reason=reason,
            )
