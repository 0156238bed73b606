"""Alipay's trade bill (`bill_type=trade`): a zip of GBK CSVs whose detail file (业务明细) has
`#` comment lines before and after a table of the day's trades and refunds. `BillParser` reads
that table line by line; `iter_zip_bill_lines` opens the real zip; `bill_row` writes a line as
Alipay does (the simulator). Pure and I/O-free; amounts are yuan strings converted exactly.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator, Sequence
from typing import IO, ClassVar

from adapters.alipay.protocol import parse_time
from adapters.base import StatementKind, StatementLine
from adapters.money import fen_to_yuan, yuan_to_fen

BILL_TYPE_TRADE = "trade"
BILL_TITLE = "#支付宝业务明细查询"
_RULE = "-" * 41
BILL_LIST_START = f"#{_RULE}业务明细列表{_RULE}"
BILL_LIST_END = f"#{_RULE}业务明细列表结束{_RULE}"
BILL_COLUMNS: tuple[str, ...] = (
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
)
"""The columns of the trade bill's detail file (业务明细)."""
BIZ_TYPE_TRADE = "交易"
BIZ_TYPE_REFUND = "退款"
BILL_ENCODING = "gbk"


def bill_row(values: Sequence[str]) -> str:
    """One CSV line as Alipay writes it: every value followed by a tab (so spreadsheets keep
    long numbers as text), comma separated, quoted only where a value needs it."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([f"{v}\t" for v in values])
    return out.getvalue()


def signed_yuan(fen: int) -> str:
    return ("-" if fen < 0 else "") + fen_to_yuan(abs(fen))


def _signed_fen(text: str) -> int:
    text = text.strip()
    negative = text.startswith("-")
    value = yuan_to_fen(text.lstrip("+-"))
    return -value if negative else value


class BillParser:
    """Reads the detail CSV of a trade bill one line at a time (`feed`), so a statement is
    never held whole. Column positions come from the header line, matched by name prefix
    (the real file writes full-width parentheses, `订单金额（元）`)."""

    _WANTED: ClassVar[dict[str, str]] = {
        "trade_no": "支付宝交易号",
        "out_trade_no": "商户订单号",
        "biz_type": "业务类型",
        "finished": "完成时间",
        "order_amount": "订单金额",
        "received": "商家实收",
        "refund_no": "退款批次号",
        "fee": "服务费",
    }

    def __init__(self) -> None:
        self._columns: dict[str, int] | None = None
        self.done = False
        self.rows = 0

    def feed(self, line: str) -> StatementLine | None:
        text = line.strip("\r\n\ufeff")
        if not text.strip() or self.done:
            return None
        if text.startswith("#"):
            if self._columns is not None:
                self.done = True
            return None
        cells = [c.strip() for c in next(csv.reader([text]))]
        if self._columns is None:
            self._columns = self._header(cells)
            return None
        self.rows += 1
        return self._line(cells)

    def _header(self, cells: list[str]) -> dict[str, int]:
        columns: dict[str, int] = {}
        for key, prefix in self._WANTED.items():
            for index, cell in enumerate(cells):
                if cell.startswith(prefix):
                    columns[key] = index
                    break
        missing = {"trade_no", "out_trade_no", "biz_type", "order_amount"} - set(columns)
        if missing:
            raise ValueError(f"not an Alipay trade bill header (missing {sorted(missing)})")
        return columns

    def _cell(self, cells: list[str], key: str) -> str:
        assert self._columns is not None
        index = self._columns.get(key)
        return cells[index] if index is not None and index < len(cells) else ""

    def _line(self, cells: list[str]) -> StatementLine:
        biz_type = self._cell(cells, "biz_type")
        finished = self._cell(cells, "finished")
        fee_text = self._cell(cells, "fee")
        fee = abs(_signed_fen(fee_text)) if fee_text else None
        occurred_at = parse_time(finished) if finished else None
        trade_no = self._cell(cells, "trade_no") or None
        out_trade_no = self._cell(cells, "out_trade_no")
        if biz_type == BIZ_TYPE_REFUND:
            received = self._cell(cells, "received") or self._cell(cells, "order_amount")
            return StatementLine(
                kind=StatementKind.REFUND,
                channel_order_id=out_trade_no,
                channel_trade_no=trade_no,
                amount=abs(_signed_fen(received)),
                status="succeeded",
                channel_refund_id=self._cell(cells, "refund_no") or None,
                fee=fee,
                occurred_at=occurred_at,
            )
        return StatementLine(
            kind=StatementKind.PAYMENT,
            channel_order_id=out_trade_no,
            channel_trade_no=trade_no,
            amount=abs(_signed_fen(self._cell(cells, "order_amount"))),
            status="succeeded" if biz_type == BIZ_TYPE_TRADE else biz_type.lower(),
            fee=fee,
            occurred_at=occurred_at,
        )


def _member_name(info: zipfile.ZipInfo) -> str:
    if info.flag_bits & 0x800:
        return info.filename
    try:  # Alipay's zips store GBK names without the UTF-8 flag
        return info.filename.encode("cp437").decode(BILL_ENCODING)
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def iter_zip_bill_lines(fileobj: IO[bytes]) -> Iterator[str]:
    """The lines of the detail CSV (业务明细, not the 汇总 summary) inside a real bill zip."""
    with zipfile.ZipFile(fileobj) as archive:
        members = [i for i in archive.infolist() if _member_name(i).lower().endswith(".csv")]
        detail = [i for i in members if "汇总" not in _member_name(i)]
        if not detail:
            raise ValueError("no detail CSV in the bill archive")
        with (
            archive.open(detail[0]) as raw,
            io.TextIOWrapper(raw, encoding=BILL_ENCODING, newline="") as text,
        ):
            yield from text
