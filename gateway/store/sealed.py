"""The columns sealed under the master key, read and re-written for its rotation
(`gateway.services.master_key`). Statements: `sql/sealed.sql`, two per column (`sealed_…`,
`reseal_…`), and the lock that keeps the tables from being written meanwhile. A column sealed
with `SecretBox` that is not in `SEALED_COLUMNS` would keep the old key after a rotation: a
test compares this list with the schema's `…_enc` columns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.store.db import Connection
from gateway.store.queries import query


@dataclass(frozen=True, slots=True)
class SealedColumn:
    table: str
    column: str
    read: str = field(repr=False, compare=False)
    """Its statement giving (row_id, context, sealed) for every sealed value."""
    reseal: str = field(repr=False, compare=False)
    """Its statement writing sealed values ($2) into rows by id ($1)."""

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass(frozen=True, slots=True)
class SealedValue:
    row_id: str
    context: str
    """What the secret is bound to (`SecretBox.seal`'s context)."""
    sealed: bytes


SEALED_COLUMNS: tuple[SealedColumn, ...] = (
    SealedColumn(
        "merchants",
        "webhook_secret_enc",
        query("sealed_merchants_webhook_secret_enc"),
        query("reseal_merchants_webhook_secret_enc"),
    ),
    SealedColumn(
        "merchants",
        "webhook_secret_prev_enc",
        query("sealed_merchants_webhook_secret_prev_enc"),
        query("reseal_merchants_webhook_secret_prev_enc"),
    ),
    SealedColumn(
        "merchant_keys",
        "secret_enc",
        query("sealed_merchant_keys_secret_enc"),
        query("reseal_merchant_keys_secret_enc"),
    ),
)

_LOCK = query("lock_sealed_tables")


async def lock_sealed_tables(conn: Connection) -> None:
    """Block every write to the sealed tables until the caller's transaction ends."""
    await conn.execute(_LOCK)


async def sealed_values(conn: Connection, column: SealedColumn) -> list[SealedValue]:
    return [
        SealedValue(row["row_id"], row["context"], bytes(row["sealed"]))
        for row in await conn.fetch(column.read)
    ]


async def reseal(conn: Connection, column: SealedColumn, values: Sequence[SealedValue]) -> int:
    """Write each value's `sealed` into its row; returns the rows written."""
    status = await conn.execute(
        column.reseal, [v.row_id for v in values], [v.sealed for v in values]
    )
    return int(status.rsplit(" ", 1)[-1])
