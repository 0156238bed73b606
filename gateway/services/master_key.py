"""Master key rotation, behind `gateway master-key rotate` (gateway/cli/master_key.py): every
secret sealed under the master key (`gateway.store.sealed.SEALED_COLUMNS`) opened with the old
box and sealed again under the new one, in one transaction that blocks writes to those tables.
If any secret does not open, nothing is written. Secrets are only ever in memory here; what the
caller gets back is counts, and the names of what does not open (table, column, row id)."""

from __future__ import annotations

from gateway.auth.secretbox import SecretBox
from gateway.store import sealed as store
from gateway.store.db import Pool


class SecretsDoNotOpen(Exception):
    """Secrets the old key does not open: the rotation wrote nothing."""

    def __init__(self, where: list[str]) -> None:
        self.where = where
        shown = ", ".join(where[:10]) + (f" and {len(where) - 10} more" if len(where) > 10 else "")
        super().__init__(f"{len(where)} secret(s) do not open with the old master key: {shown}")


async def rotate_master_key(pool: Pool, old: SecretBox, new: SecretBox) -> dict[str, int]:
    """Re-seal every sealed secret from `old` to `new` (one transaction). Returns the number
    re-sealed per column (`table.column`). Raises SecretsDoNotOpen, having changed nothing."""
    async with pool.acquire() as conn, conn.transaction():
        await store.lock_sealed_tables(conn)
        resealed: dict[store.SealedColumn, list[store.SealedValue]] = {}
        failed: list[str] = []
        for column in store.SEALED_COLUMNS:
            resealed[column] = []
            for value in await store.sealed_values(conn, column):
                try:
                    plaintext = old.open(value.sealed, value.context)
                except ValueError:
                    failed.append(f"{column.name} of {value.row_id}")
                    continue
                sealed = new.seal(plaintext, value.context)
                resealed[column].append(store.SealedValue(value.row_id, value.context, sealed))
        if failed:
            raise SecretsDoNotOpen(failed)  # the transaction ends having written nothing
        return {
            column.name: await store.reseal(conn, column, values)
            for column, values in resealed.items()
        }
