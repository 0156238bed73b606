"""WeChat Pay's trade bill (交易账单, `bill_type=ALL`): rendering (the simulator) and parsing
(the adapter), line by line. Pure and I/O-free.

The file is CSV whose every field is prefixed with a backtick, with a header row and two totals
rows at the end; amounts in yuan, times in China time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from adapters.base import StatementKind, StatementLine
from adapters.chinatime import CHINA_TZ
from adapters.money import fen_to_yuan

BILL_HEADER: tuple[str, ...] = (
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
)
"""Columns of the ALL trade bill (交易账单, bill_type=ALL), in the real order."""

BILL_TOTALS_HEADER: tuple[str, ...] = (
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
)

BILL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
FEE_RATE = Decimal("0.006")
"""The simulator's fee: 0.60% of the amount (a common WeChat Pay rate), rounded to the fen."""


class StatementError(ValueError):
    """A trade bill that does not parse or whose totals disagree with its rows."""


def yuan(text: str) -> int:
    """A bill amount in yuan (`0.01`, `-0.02`, `1.00000`) -> fen, rounding half up to the fen
    (fees carry more decimals than two). Raises StatementError."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise StatementError(f"not an amount: {text!r}") from None
    if not value.is_finite():
        raise StatementError(f"not an amount: {text!r}")
    return int((value * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def fen_text(fen: int) -> str:
    """fen -> yuan text with two decimals, negative allowed (refunded fees)."""
    return ("-" if fen < 0 else "") + fen_to_yuan(abs(fen))


def fee_for(amount: int) -> int:
    return int((Decimal(amount) * FEE_RATE).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def bill_line(fields: Sequence[str]) -> str:
    """One data row: every field prefixed with a backtick (so spreadsheets keep long numbers
    as text); backticks and commas inside a field are not representable and are dropped."""
    return ",".join("`" + f.replace("`", "").replace(",", " ") for f in fields)


def split_bill_line(line: str) -> list[str]:
    """Split a data row into its fields (without the backticks)."""
    line = line.rstrip("\r\n")
    if not line.startswith("`"):
        raise StatementError("data row does not start with a backtick")
    return line[1:].split(",`")


@dataclass(slots=True)
class BillPayment:
    """What the simulator puts in a bill row for a payment."""

    paid_at: datetime
    appid: str
    mchid: str
    transaction_id: str
    out_trade_no: str
    openid: str
    trade_state: str
    amount: int
    description: str


@dataclass(slots=True)
class BillRefund:
    refunded_at: datetime
    appid: str
    mchid: str
    transaction_id: str
    out_trade_no: str
    openid: str
    refund_id: str
    out_refund_no: str
    refund: int
    refund_status: str
    description: str


@dataclass(slots=True)
class BillWriter:
    """Renders a trade bill row by row and its totals (used by the simulator)."""

    rows: int = 0
    settlement_total: int = 0
    refund_total: int = 0
    fee_total: int = 0
    order_total: int = 0
    refund_request_total: int = 0

    @staticmethod
    def header() -> str:
        return ",".join(BILL_HEADER)

    def payment(self, p: BillPayment) -> str:
        fee = fee_for(p.amount)
        self.rows += 1
        self.settlement_total += p.amount
        self.order_total += p.amount
        self.fee_total += fee
        return bill_line(
            [
                p.paid_at.astimezone(CHINA_TZ).strftime(BILL_TIME_FORMAT),
                p.appid,
                p.mchid,
                "0",
                "",
                p.transaction_id,
                p.out_trade_no,
                p.openid,
                "NATIVE",
                p.trade_state,
                "OTHERS",
                "CNY",
                fen_text(p.amount),
                "0.00",
                "0",
                "0",
                "0.00",
                "0.00",
                "",
                "",
                p.description,
                "",
                fen_text(fee),
                "0.60%",
                fen_text(p.amount),
                "0.00",
                "",
            ]
        )

    def refund(self, r: BillRefund) -> str:
        fee = -fee_for(r.refund)
        self.rows += 1
        self.refund_total += r.refund
        self.refund_request_total += r.refund
        self.fee_total += fee
        return bill_line(
            [
                r.refunded_at.astimezone(CHINA_TZ).strftime(BILL_TIME_FORMAT),
                r.appid,
                r.mchid,
                "0",
                "",
                r.transaction_id,
                r.out_trade_no,
                r.openid,
                "NATIVE",
                "REFUND",
                "OTHERS",
                "CNY",
                "0.00",
                "0.00",
                r.refund_id,
                r.out_refund_no,
                fen_text(r.refund),
                "0.00",
                "ORIGINAL",
                r.refund_status,
                r.description,
                "",
                fen_text(fee),
                "0.60%",
                "0.00",
                fen_text(r.refund),
                "",
            ]
        )

    def totals(self) -> list[str]:
        return [
            ",".join(BILL_TOTALS_HEADER),
            bill_line(
                [
                    str(self.rows),
                    fen_text(self.settlement_total),
                    fen_text(self.refund_total),
                    "0.00",
                    fen_text(self.fee_total),
                    fen_text(self.order_total),
                    fen_text(self.refund_request_total),
                ]
            ),
        ]


@dataclass(slots=True)
class BillParser:
    """Parses a trade bill line by line into StatementLines, then checks the totals rows.

    Payment rows (交易状态 other than REFUND) give kind=payment, the 商户订单号 as the channel
    order id, the 微信订单号 as the trade no, 订单金额 as the amount and 交易状态 lowered as the
    status (`success`, or `revoked`, …). Refund rows (交易状态 REFUND) give kind=refund, the
    商户退款单号 as the channel refund id, 申请退款金额 as the amount and 退款状态 lowered as the
    status (`success`, `processing`, …). Times are China time.
    """

    columns: dict[str, int] = field(default_factory=dict)
    in_totals: bool = False
    totals: list[str] | None = None
    rows: int = 0
    order_total: int = 0
    refund_request_total: int = 0
    finished: bool = False

    def feed(self, line: str) -> StatementLine | None:
        line = line.lstrip("\ufeff").rstrip("\r\n")
        if not line.strip():
            return None
        if not self.columns:
            names = line.split(",")
            missing = [
                n for n in ("交易时间", "微信订单号", "商户订单号", "交易状态") if n not in names
            ]
            if missing:
                raise StatementError(f"bill header lacks {missing}")
            self.columns = {name: i for i, name in enumerate(names)}
            return None
        if line.startswith(BILL_TOTALS_HEADER[0]):
            self.in_totals = True
            return None
        if self.in_totals:
            if self.totals is not None:
                raise StatementError("more than one totals row")
            self.totals = split_bill_line(line)
            return None
        return self._row(split_bill_line(line))

    def _get(self, fields: list[str], name: str) -> str:
        index = self.columns.get(name)
        if index is None or index >= len(fields):
            return ""
        return fields[index].strip()

    def _row(self, fields: list[str]) -> StatementLine:
        if len(fields) < len(self.columns):
            raise StatementError("bill row has fewer fields than the header")
        try:
            occurred = datetime.strptime(self._get(fields, "交易时间"), BILL_TIME_FORMAT)
        except ValueError:
            raise StatementError("bad 交易时间") from None
        occurred_at = occurred.replace(tzinfo=CHINA_TZ)
        fee_text = self._get(fields, "手续费")
        fee = yuan(fee_text) if fee_text else None
        trade_no = self._get(fields, "微信订单号") or None
        order_id = self._get(fields, "商户订单号")
        state = self._get(fields, "交易状态")
        self.rows += 1
        if state == "REFUND":
            requested = self._get(fields, "申请退款金额") or self._get(fields, "退款金额")
            amount = yuan(requested)
            self.refund_request_total += amount
            return StatementLine(
                kind=StatementKind.REFUND,
                channel_order_id=order_id,
                channel_trade_no=trade_no,
                amount=amount,
                status=self._get(fields, "退款状态").lower(),
                channel_refund_id=self._get(fields, "商户退款单号") or None,
                fee=fee,
                occurred_at=occurred_at,
            )
        total = self._get(fields, "订单金额") or self._get(fields, "应结订单金额")
        amount = yuan(total)
        self.order_total += amount
        return StatementLine(
            kind=StatementKind.PAYMENT,
            channel_order_id=order_id,
            channel_trade_no=trade_no,
            amount=amount,
            status=state.lower(),
            fee=fee,
            occurred_at=occurred_at,
        )

    def finish(self) -> None:
        """Check the totals rows against the rows read. Raises StatementError."""
        self.finished = True
        if not self.columns:
            raise StatementError("empty bill")
        if self.totals is None:
            raise StatementError("bill has no totals row")
        totals = dict(zip(BILL_TOTALS_HEADER, self.totals, strict=False))
        try:
            count = int(totals.get("总交易单数", ""))
        except ValueError:
            raise StatementError("bad 总交易单数") from None
        if count != self.rows:
            raise StatementError(f"bill says {count} rows, has {self.rows}")
        if "订单总金额" in totals and yuan(totals["订单总金额"]) != self.order_total:
            raise StatementError("订单总金额 disagrees with the rows")
        if (
            "申请退款总金额" in totals
            and yuan(totals["申请退款总金额"]) != self.refund_request_total
        ):
            raise StatementError("申请退款总金额 disagrees with the rows")


def parse_bill(lines: Iterable[str]) -> Iterator[StatementLine]:
    """Parse a whole trade bill given line by line (checks totals at the end)."""
    parser = BillParser()
    for line in lines:
        parsed = parser.feed(line)
        if parsed is not None:
            yield parsed
    parser.finish()
