"""UnionPay's reconciliation file (txnType 76, `fileTransReq.do`), as the simulator writes it and
the adapter reads it: deflated and base64-encoded in the signed answer's ``fileContent``,
inflated and parsed a chunk at a time. Pure and I/O-free.
"""

from __future__ import annotations

import base64
import csv
import io
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from adapters.base import StatementKind, StatementLine
from adapters.unionpay.protocol import (
    PARTIAL_SUCCESS,
    SUCCESS,
    TXN_CONSUME,
    TXN_REFUND,
    TXN_UNDO,
    parse_txn_time,
)

STATEMENT_COLUMNS: Final = (
    "txnType",
    "orderId",
    "origOrderId",
    "queryId",
    "origQryId",
    "txnTime",
    "completeTime",
    "txnAmt",
    "fee",
    "respCode",
    "settleDate",
)
"""The simulator's reconciliation file (a simplification: the real one is a zip of fixed-width
files, INN...ZM_<merId> and others). One header line, then one CSV line per transaction that
moved money on that settlement date: consumptions (01), refunds (04) and undos (31). Amounts
and fees are fen; times are China time."""


@dataclass(frozen=True, slots=True)
class StatementRow:
    txn_type: str
    order_id: str
    orig_order_id: str
    query_id: str
    orig_qry_id: str
    txn_time: str
    complete_time: str
    amount: int
    fee: int
    resp_code: str
    settle_date: str

    def line(self) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow(
            [
                self.txn_type,
                self.order_id,
                self.orig_order_id,
                self.query_id,
                self.orig_qry_id,
                self.txn_time,
                self.complete_time,
                str(self.amount),
                str(self.fee),
                self.resp_code,
                self.settle_date,
            ]
        )
        return out.getvalue()


def statement_header() -> str:
    return ",".join(STATEMENT_COLUMNS) + "\n"


def pack_file(text: str) -> str:
    """fileContent: the file deflated (zlib) and base64-encoded, as UnionPay sends it."""
    return base64.b64encode(zlib.compress(text.encode("utf-8"))).decode("ascii")


def unpack_file_lines(file_content: str, chunk_size: int = 1 << 16) -> Iterator[str]:
    """The lines of a fileContent, inflated a chunk at a time (never the whole text at once)."""
    data = base64.b64decode(file_content, validate=True)
    inflater = zlib.decompressobj()
    pending = b""
    for start in range(0, len(data), chunk_size):
        pending += inflater.decompress(data[start : start + chunk_size])
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8")
    pending += inflater.flush()
    if not inflater.eof:
        raise ValueError("fileContent is truncated")
    for line in pending.split(b"\n"):
        if line:
            yield line.decode("utf-8")


def statement_line(row: str) -> StatementLine | None:
    """One line of the reconciliation file in the gateway's terms (None for the header or a
    blank line). Raises ValueError on a malformed line."""
    if not row.strip() or row.startswith(STATEMENT_COLUMNS[0] + ","):
        return None
    cells = next(csv.reader([row]))
    if len(cells) != len(STATEMENT_COLUMNS):
        raise ValueError(f"statement line has {len(cells)} cells, not {len(STATEMENT_COLUMNS)}")
    values = dict(zip(STATEMENT_COLUMNS, cells, strict=True))
    amount = int(values["txnAmt"])
    fee = int(values["fee"]) if values["fee"] else None
    status = "succeeded" if values["respCode"] in (SUCCESS, PARTIAL_SUCCESS) else "failed"
    occurred = None
    if values["completeTime"]:
        occurred = parse_txn_time(values["completeTime"])
    if values["txnType"] == TXN_CONSUME:
        return StatementLine(
            kind=StatementKind.PAYMENT,
            channel_order_id=values["orderId"],
            channel_trade_no=values["queryId"] or None,
            amount=amount,
            status=status,
            fee=fee,
            occurred_at=occurred,
        )
    if values["txnType"] in (TXN_REFUND, TXN_UNDO):
        return StatementLine(
            kind=StatementKind.REFUND,
            channel_order_id=values["origOrderId"],
            channel_trade_no=values["queryId"] or None,
            amount=amount,
            status=status,
            channel_refund_id=values["orderId"],
            fee=fee,
            occurred_at=occurred,
        )
    raise ValueError(f"unknown txnType {values['txnType']!r} in the statement")


def statement_lines(lines: Iterable[str]) -> Iterator[StatementLine]:
    for row in lines:
        line = statement_line(row)
        if line is not None:
            yield line
