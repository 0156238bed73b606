"""The channel contract: every scenario runs against all four adapters and their simulators
(bank, wechat, alipay, unionpay), in-process. Where the channels differ, the driver says what
to expect (`tests/contract/drivers.py`); checks that only one channel has are in
`test_<channel>_specific.py`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import structlog.testing
from aiohttp import web

from adapters.base import (
    ChannelResult,
    IncomingRequest,
    Notification,
    NotificationKind,
    NotificationRejected,
    Outcome,
    StatementKind,
    StatementUnavailable,
)
from adapters.registry import AdapterConfigError, build_adapter, check_config
from tests.contract.conftest import (
    NOTIFY_TIME_SCALE,
    SHORT_TIMEOUT_MS,
    TIMEOUT_SLEEP_S,
    Channel,
    result_shape,
)
from tests.contract.drivers import CHINA, CONFIG_DIR, FAILOVER, RETRY, Expect, write

pytestmark = pytest.mark.asyncio(loop_scope="module")

REFUND = NotificationKind.REFUND


def same_event(first: Notification, second: Notification, ignore: frozenset[str]) -> None:
    """Two deliveries of one notification say the same thing (the channel's raw fields too,
    but for those it sets afresh on each delivery)."""
    assert (first.kind, first.channel_order_id, first.channel_refund_id) == (
        second.kind,
        second.channel_order_id,
        second.channel_refund_id,
    )
    assert replace(first.result, raw={}) == replace(second.result, raw={})
    kept = [{k: v for k, v in n.result.raw.items() if k not in ignore} for n in (first, second)]
    assert kept[0] == kept[1]


def is_left_to_query(created: ChannelResult) -> bool:
    """A create whose outcome is not known: UNKNOWN, to be queried later (RETRY), for every
    channel; never failed over."""
    return (created.outcome, created.decision) == (Outcome.UNKNOWN, RETRY)


def is_left_open(refund: ChannelResult) -> bool:
    """A refund that got no answer to settle it: neither done nor refused, to be asked again
    at the same channel."""
    return refund.outcome not in (Outcome.SUCCEEDED, Outcome.FAILED) and refund.decision is RETRY


async def calls_behind(
    channel: Channel,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    *,
    create: Expect,
    create_attempts: int,
    query: Expect,
    refund: Expect,
) -> None:
    """A create, a query and a refund where `handler` answers every request in place of the
    channel, in a way that may come after the channel acted: the create is left to be queried
    (after `create_attempts` requests), the refund left open."""
    stub = await channel.stub(handler)
    adapter = channel.build(base_url=stub.base_url)
    created = await adapter.create_payment(channel.payment())
    assert result_shape(created) == create
    assert is_left_to_query(created)
    assert stub.hits == create_attempts
    queried = await adapter.query_payment(channel.new_order_id())
    assert result_shape(queried) == query
    refunded = await adapter.refund(channel.refund_of(channel.payment(), 100))
    assert result_shape(refunded) == refund
    assert is_left_open(refunded)


async def wait_for_view(channel: Channel, order_id: str, within_s: float) -> dict[str, object]:
    deadline = time.monotonic() + within_s
    while True:
        view = await channel.order_view(order_id)
        if view is not None:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"the channel never created {order_id}")
        await asyncio.sleep(0.02)


# ---- create, pay, notification, query ---------------------------------------------------------


async def test_create_pay_notification_query(channel: Channel) -> None:
    driver, adapter = channel.driver, channel.adapter
    rejected_before = len(channel.receiver.rejections)
    req = channel.payment(1999)
    created = await adapter.create_payment(req)
    assert result_shape(created) == driver.created
    assert created.next_action is not None
    assert created.next_action.type == driver.next_action_type
    url = created.next_action.url
    assert url.startswith(f"{channel.sim_base}{driver.payer_path}")
    names_order = url == f"{channel.sim_base}{driver.payer_path}{req.channel_order_id}"
    assert names_order is driver.payer_url_names_order
    assert bool(created.channel_trade_no) is driver.create_gives_trade_no

    view = await channel.order_view(req.channel_order_id)
    assert view is not None
    assert (view["status"], view["amount"], view["currency"]) == (driver.sim_waiting, 1999, "CNY")
    assert view["description"] == req.description
    if driver.create_gives_trade_no:
        assert created.channel_trade_no == view["channel_trade_no"]

    waiting = await adapter.query_payment(req.channel_order_id)
    assert result_shape(waiting) == driver.waiting_query
    assert waiting.amount == (1999 if driver.waiting_query_has_amount else None)
    assert waiting.channel_trade_no == (
        view["channel_trade_no"] if driver.waiting_query_has_trade_no else None
    )

    async with channel.http.get(url) as page:
        assert page.status == 200
        html = await page.text()
    assert req.channel_order_id in html and driver.amount_text(1999) in html

    paid_at_start = datetime.now(UTC)
    answer = await channel.payer(url)
    view = await channel.order_view(req.channel_order_id)
    assert view is not None and (view["status"], view["amount"]) == (driver.sim_paid, 1999)
    assert (answer.status, answer.body) == (200, driver.paid_answer(req.channel_order_id, view))

    [note] = await channel.receiver.wait_accepted(req.channel_order_id)
    assert note.kind is NotificationKind.PAYMENT
    assert note.channel_order_id == req.channel_order_id
    assert result_shape(note.result) == driver.paid_query
    assert note.result.amount == 1999
    assert note.result.channel_trade_no == view["channel_trade_no"]
    assert note.result.paid_at is not None
    assert abs(note.result.paid_at - paid_at_start) < timedelta(seconds=5)
    assert len(channel.receiver.rejections) == rejected_before
    # acknowledged the first time: the channel does not send it again
    await asyncio.sleep(driver.notify_retry_after_s(NOTIFY_TIME_SCALE) * 1.5 + 0.05)
    assert len(channel.receiver.about(req.channel_order_id)) == 1

    paid = await adapter.query_payment(req.channel_order_id)
    assert result_shape(paid) == driver.paid_query
    assert paid.channel_trade_no == view["channel_trade_no"]
    assert paid.amount == 1999
    assert paid.paid_at == note.result.paid_at
    assert paid.paid_at == datetime.fromisoformat(view["paid_at"]).replace(microsecond=0)

    again = await channel.payer(url)
    assert (again.status, again.body[driver.payer_status_field]) == (409, driver.payer_paid)


async def test_create_is_idempotent_by_order_id(channel: Channel) -> None:
    driver, adapter = channel.driver, channel.adapter
    first = await channel.create()
    repeat = await adapter.create_payment(first.request)
    assert result_shape(repeat) == driver.repeat_create
    if driver.repeat_create_same_answer:
        assert repeat.next_action == first.result.next_action
        assert repeat.channel_trade_no == first.result.channel_trade_no
    conflicting = await adapter.create_payment(replace(first.request, amount=1))
    assert result_shape(conflicting) == driver.conflicting_create
    view = await channel.order_view(first.order_id)
    assert view is not None and (view["amount"], view["status"]) == (1999, driver.sim_waiting)

    assert (await channel.payer(first.payer_url)).status == 200
    after_paid = await adapter.create_payment(first.request)
    assert result_shape(after_paid) == driver.create_after_paid


async def test_a_method_the_channel_does_not_take_fails_over_unsent(channel: Channel) -> None:
    proxy = await channel.proxy()
    adapter = channel.build(base_url=proxy.base_url)
    req = channel.payment(method=channel.driver.other_method)
    result = await adapter.create_payment(req)
    assert result_shape(result) == channel.driver.other_method_create
    assert result.decision is FAILOVER
    assert proxy.hits == 0
    assert await channel.order_view(req.channel_order_id) is None


async def test_a_currency_the_channel_does_not_take_is_refused(channel: Channel) -> None:
    req = channel.payment(currency="XTS")
    result = await channel.adapter.create_payment(req)
    assert result_shape(result) == channel.driver.unsupported_currency_create
    assert result.outcome in (Outcome.FAILED, Outcome.SYSTEM_ERROR)
    assert await channel.order_view(req.channel_order_id) is None


async def test_payer_page_refuses_unknown_orders_and_actions(channel: Channel) -> None:
    created = await channel.create()
    elsewhere = created.payer_url.rsplit("/", 1)[0] + "/" + channel.new_order_id()
    async with channel.http.get(elsewhere) as resp:
        assert resp.status == 404
    assert (await channel.payer(elsewhere)).status == 404
    status, _, _ = await channel.payer_form(created.payer_url, "steal")
    assert status == 400
    assert (await channel.payer(created.payer_url, "steal")).status == 400
    view = await channel.order_view(created.order_id)
    assert view is not None and view["status"] == channel.driver.sim_waiting


async def test_query_of_an_unknown_order(channel: Channel) -> None:
    result = await channel.adapter.query_payment(channel.new_order_id())
    assert result_shape(result) == channel.driver.unknown_query
    assert result.outcome is not Outcome.SUCCEEDED


# ---- cancel and close -------------------------------------------------------------------------


async def test_payer_cancel_fails_the_payment(channel: Channel) -> None:
    driver, adapter = channel.driver, channel.adapter
    created = await channel.create()
    status, content_type, page = await channel.payer_form(created.payer_url, "cancel")
    assert (status, content_type) == (200, "text/html")
    assert driver.cancel_page_text in page

    if driver.cancel_notifies:
        [note] = await channel.receiver.wait_accepted(created.order_id)
        assert result_shape(note.result) == driver.cancelled_query
    else:
        await asyncio.sleep(0.1)
        assert channel.receiver.about(created.order_id) == []
    queried = await adapter.query_payment(created.order_id)
    assert result_shape(queried) == driver.cancelled_query
    assert queried.outcome is Outcome.FAILED

    again = await channel.payer(created.payer_url)
    assert (again.status, again.body[driver.payer_status_field]) == (409, driver.payer_cancelled)
    closed = await adapter.close_payment(created.order_id)
    assert result_shape(closed) == driver.close_after_cancel


async def test_close_then_query(channel: Channel) -> None:
    driver, adapter = channel.driver, channel.adapter
    created = await channel.create()
    assert result_shape(await adapter.close_payment(created.order_id)) == driver.closed
    assert result_shape(await adapter.close_payment(created.order_id)) == driver.closed_again
    queried = await adapter.query_payment(created.order_id)
    assert result_shape(queried) == driver.closed_query
    assert queried.outcome is Outcome.FAILED
    view = await channel.order_view(created.order_id)
    assert view is not None and view["status"] == driver.sim_closed

    answer = await channel.payer(created.payer_url)
    assert (answer.status, answer.body[driver.payer_status_field]) == (409, driver.payer_closed)
    recreated = await adapter.create_payment(created.request)
    assert result_shape(recreated) == driver.create_after_close
    await asyncio.sleep(0.05)
    assert channel.receiver.about(created.order_id) == []  # a close is answered, not notified


async def test_close_of_a_paid_order_is_refused(channel: Channel) -> None:
    driver, adapter = channel.driver, channel.adapter
    paid = await channel.pay()
    closed = await adapter.close_payment(paid.order_id)
    assert result_shape(closed) == driver.close_paid
    queried = await adapter.query_payment(paid.order_id)
    assert result_shape(queried) == driver.paid_query
    view = await channel.order_view(paid.order_id)
    assert view is not None and view["status"] == driver.sim_paid


async def test_close_of_an_order_the_channel_never_saw(channel: Channel) -> None:
    """What the status sync relies on when a create never answered: the close, and what a
    create arriving after it gets."""
    driver, adapter = channel.driver, channel.adapter
    req = channel.payment()
    assert result_shape(await adapter.close_payment(req.channel_order_id)) == driver.close_unknown
    late = await adapter.create_payment(req)
    assert result_shape(late) == driver.create_after_close_unknown


# ---- refunds ----------------------------------------------------------------------------------


async def test_refund_notification_and_query(channel: Channel) -> None:
    driver, adapter = channel.driver, channel.adapter
    paid = await channel.pay(1999)
    refund = channel.refund_of(paid.request, 500)
    accepted = await adapter.refund(refund)
    assert result_shape(accepted) == driver.refund_accepted
    assert accepted.amount == 500
    assert accepted.channel_trade_no
    if driver.refund_has_own_trade_no:
        assert accepted.channel_trade_no != paid.notification.result.channel_trade_no
    at_once = await adapter.refund(refund)  # a retry straight away: the same refund
    assert (at_once.amount, at_once.channel_trade_no) == (500, accepted.channel_trade_no)

    [note] = await channel.receiver.wait_accepted(paid.order_id, REFUND)
    assert (note.channel_order_id, note.channel_refund_id) == (
        paid.order_id,
        refund.channel_refund_id,
    )
    assert result_shape(note.result) == driver.refund_query
    assert note.result.outcome is Outcome.SUCCEEDED
    assert note.result.amount == (500 if driver.refund_notification_has_amount else None)
    assert note.result.channel_trade_no == accepted.channel_trade_no

    queried = await adapter.query_refund(paid.order_id, refund.channel_refund_id)
    assert result_shape(queried) == driver.refund_query
    assert (queried.amount, queried.channel_trade_no) == (500, accepted.channel_trade_no)
    assert queried.paid_at is not None

    repeated = await adapter.refund(refund)  # the same refund id: the same refund
    assert result_shape(repeated) == driver.refund_repeated
    assert (repeated.amount, repeated.channel_trade_no) == (500, accepted.channel_trade_no)
    view = await channel.order_view(paid.order_id)
    assert view is not None
    assert [r["amount"] for r in view["refunds"].values()] == [500]

    payment = await adapter.query_payment(paid.order_id)
    assert result_shape(payment) == driver.partly_refunded_query
    assert payment.outcome is Outcome.SUCCEEDED
    missing = await adapter.query_refund(paid.order_id, channel.new_refund_id())
    assert result_shape(missing) == driver.unknown_refund_query


async def test_refunds_are_limited_to_what_was_paid(channel: Channel) -> None:
    driver, adapter = channel.driver, channel.adapter
    paid = await channel.pay(1999)
    first = channel.refund_of(paid.request, 500)
    await adapter.refund(first)
    await channel.receiver.wait_accepted(paid.order_id, REFUND)

    discordant = await adapter.refund(replace(first, amount=600))
    assert result_shape(discordant) == driver.refund_discordant
    assert discordant.amount != 600  # never reported as done for the other amount
    too_much = await adapter.refund(channel.refund_of(paid.request, 1500))
    assert result_shape(too_much) == driver.refund_too_much

    rest = await adapter.refund(channel.refund_of(paid.request, 1499))
    assert result_shape(rest) == driver.refund_accepted
    assert rest.amount == 1499
    await channel.receiver.wait_accepted(paid.order_id, REFUND, count=2)
    view = await channel.order_view(paid.order_id)
    assert view is not None
    assert sorted(r["amount"] for r in view["refunds"].values()) == [500, 1499]

    fully = await adapter.query_payment(paid.order_id)
    assert result_shape(fully) == driver.fully_refunded_query
    assert fully.outcome is Outcome.SUCCEEDED  # refunded, but it was paid
    one_more = await adapter.refund(channel.refund_of(paid.request, 1))
    assert result_shape(one_more) == driver.refund_after_full


async def test_refund_of_an_unpaid_or_unknown_order_is_refused(channel: Channel) -> None:
    driver, adapter = channel.driver, channel.adapter
    created = await channel.create()
    unpaid = await adapter.refund(channel.refund_of(created.request, 100))
    assert result_shape(unpaid) == driver.refund_unpaid
    unknown = await adapter.refund(channel.refund_of(channel.payment(), 100))
    assert result_shape(unknown) == driver.refund_unknown_order
    view = await channel.order_view(created.order_id)
    assert view is not None and view["refunds"] == {}


# ---- notification modes -----------------------------------------------------------------------


async def test_notify_normal_sends_one(channel: Channel) -> None:
    paid = await channel.pay()
    await asyncio.sleep(channel.driver.notify_retry_after_s(NOTIFY_TIME_SCALE) * 1.5 + 0.05)
    [delivery] = channel.receiver.about(paid.order_id)
    assert delivery.acknowledged
    assert delivery.request.content_type == channel.driver.notification_content_type


async def test_notify_duplicate_sends_two(channel: Channel) -> None:
    driver = channel.driver
    await channel.faults(notify="duplicate")
    created = await channel.create()
    await channel.payer(created.payer_url)
    first, second = await channel.receiver.wait_accepted(created.order_id, count=2)
    assert first.result.outcome is Outcome.SUCCEEDED
    same_event(first, second, driver.per_delivery_fields)
    one, two = channel.receiver.about(created.order_id)
    assert driver.event_id(one.request) == driver.event_id(two.request)
    await asyncio.sleep(driver.notify_retry_after_s(NOTIFY_TIME_SCALE) * 1.5 + 0.05)
    assert len(channel.receiver.about(created.order_id)) == 2


async def test_notify_drop_sends_nothing_and_query_tells_the_truth(channel: Channel) -> None:
    await channel.faults(notify="drop")
    created = await channel.create()
    before = len(channel.receiver.deliveries)
    assert (await channel.payer(created.payer_url)).status == 200
    await asyncio.sleep(0.2)
    assert channel.receiver.deliveries[before:] == []
    queried = await channel.adapter.query_payment(created.order_id)
    assert result_shape(queried) == channel.driver.paid_query
    assert queried.amount == 1999


async def test_notify_delay_arrives_after_the_delay(channel: Channel) -> None:
    await channel.faults(notify="delay", notify_delay_ms=300)
    created = await channel.create()
    started = time.monotonic()
    await channel.payer(created.payer_url)
    await asyncio.sleep(0.2)
    assert channel.receiver.about(created.order_id) == []
    [note] = await channel.receiver.wait_accepted(created.order_id)
    assert note.result.outcome is Outcome.SUCCEEDED
    [delivery] = channel.receiver.about(created.order_id)
    assert delivery.at - started >= 0.3


async def test_unacknowledged_notification_is_sent_again(channel: Channel) -> None:
    driver = channel.driver
    channel.receiver.refuse_next = 2
    created = await channel.create()
    await channel.payer(created.payer_url)
    [note] = await channel.receiver.wait_accepted(created.order_id)
    deliveries = channel.receiver.about(created.order_id)
    assert [d.acknowledged for d in deliveries] == [False, False, True]
    assert len({driver.event_id(d.request) for d in deliveries}) == 1
    for refused in deliveries[:2]:
        assert refused.notification is not None
        same_event(refused.notification, note, driver.per_delivery_fields)
    # the retries came on the channel's schedule
    first_retry = driver.notify_schedule_s[0] * NOTIFY_TIME_SCALE
    assert deliveries[1].at - deliveries[0].at >= first_retry * 0.9


async def test_acknowledgements_are_in_the_channel_format(channel: Channel) -> None:
    assert channel.adapter.ack(True) == channel.driver.ack_accepted
    assert channel.adapter.ack(False) == channel.driver.ack_refused


async def test_forged_and_tampered_notifications_are_rejected(channel: Channel) -> None:
    driver, adapter = channel.driver, channel.adapter
    paid = await channel.pay()
    rejected_before = len(channel.receiver.rejections)
    genuine = channel.receiver.about(paid.order_id)[0].request
    assert adapter.parse_notification(genuine).result.amount == 1999
    # the driver's signing is right: the channel's own key, the same content, is accepted
    assert adapter.parse_notification(driver.resign(genuine)).result.amount == 1999

    forgeries = {
        "amount changed after signing": driver.tamper_amount(genuine),
        "no signature": driver.unsigned(genuine),
        "signed by someone else": driver.resign(genuine, foreign=True),
        "signed by the channel for another merchant": driver.resign(
            genuine, merchant=driver.other_merchant
        ),
        "not a notification at all": IncomingRequest(
            "POST", genuine.path, {}, b"\xff\xfe", genuine.content_type
        ),
    }
    for name, forged in forgeries.items():
        with pytest.raises(NotificationRejected):
            adapter.parse_notification(forged)
            pytest.fail(f"accepted: {name}")

    # over HTTP the channel gets its refusal, so that it would send the genuine one again
    tampered = forgeries["amount changed after signing"]
    hop_by_hop = ("host", "content-length", "transfer-encoding", "connection")
    headers = {k: v for k, v in tampered.headers.items() if k.lower() not in hop_by_hop}
    async with channel.http.post(channel.notify_url, data=tampered.body, headers=headers) as resp:
        body = await resp.read()
        assert (resp.status, body) == (driver.ack_refused.status, driver.ack_refused.body)
    assert len(channel.receiver.rejections) == rejected_before + 1
    assert channel.receiver.accepted(paid.order_id) == [paid.notification]


async def test_refund_notifications_are_verified_too(channel: Channel) -> None:
    driver, adapter = channel.driver, channel.adapter
    paid = await channel.pay()
    await adapter.refund(channel.refund_of(paid.request, 300))
    await channel.receiver.wait_accepted(paid.order_id, REFUND)
    genuine = channel.receiver.about(paid.order_id, REFUND)[0].request
    assert adapter.parse_notification(driver.resign(genuine)).kind is REFUND
    for forged in (
        driver.tamper_amount(genuine),
        driver.unsigned(genuine),
        driver.resign(genuine, foreign=True),
    ):
        with pytest.raises(NotificationRejected):
            adapter.parse_notification(forged)


# ---- faults -----------------------------------------------------------------------------------


async def test_system_error_at_create_fails_over(channel: Channel) -> None:
    driver = channel.driver
    proxy = await channel.proxy()
    adapter = channel.build(base_url=proxy.base_url)
    await channel.faults(error_rate=1)
    req = channel.payment()
    created = await adapter.create_payment(req)
    assert result_shape(created) == driver.error_create
    assert (created.outcome, created.decision) == (Outcome.SYSTEM_ERROR, FAILOVER)
    assert proxy.hits == driver.error_create_attempts
    assert await channel.order_view(req.channel_order_id) is None

    proxy.hits = 0
    queried = await adapter.query_payment(req.channel_order_id)
    assert result_shape(queried) == driver.error_query
    assert proxy.hits == driver.error_query_attempts  # a query is safe to repeat
    paid = channel.payment()
    refund = await adapter.refund(channel.refund_of(paid, 100))
    assert result_shape(refund) == driver.error_refund
    with pytest.raises(StatementUnavailable, match=re.escape(str(driver.error_create[2]))):
        await channel.statement(datetime.now(CHINA).date(), adapter)

    await channel.faults(error_rate=0)
    assert result_shape(await adapter.create_payment(req)) == driver.created


async def test_connection_refused_before_sending_fails_over(channel: Channel) -> None:
    driver = channel.driver
    adapter = channel.build(base_url=channel.closed_port_base_url())
    created = await adapter.create_payment(channel.payment())
    assert result_shape(created) == driver.refused_create
    assert (created.outcome, created.decision) == (Outcome.SYSTEM_ERROR, FAILOVER)
    queried = await adapter.query_payment(channel.new_order_id())
    assert result_shape(queried) == driver.refused_query
    assert queried.outcome is Outcome.UNKNOWN


async def test_timeout_is_unknown_and_a_later_query_resolves_it(channel: Channel) -> None:
    driver = channel.driver
    await channel.faults(timeout_rate=1)
    impatient = channel.build(timeout_ms=SHORT_TIMEOUT_MS)
    req = channel.payment()
    started = time.monotonic()
    result = await impatient.create_payment(req)
    assert time.monotonic() - started < SHORT_TIMEOUT_MS / 1000 + 0.3
    assert result_shape(result) == driver.timeout_create
    assert is_left_to_query(result)
    assert result.next_action is None
    refund = await impatient.refund(channel.refund_of(channel.payment(), 100))
    assert result_shape(refund) == driver.timeout_refund
    assert is_left_open(refund)

    await channel.faults(timeout_rate=0)
    # the channel carried on after the caller gave up: the order exists, a query says so
    await wait_for_view(channel, req.channel_order_id, TIMEOUT_SLEEP_S + 2)
    assert result_shape(await channel.adapter.query_payment(req.channel_order_id)) == (
        driver.waiting_query
    )


async def test_timeout_after_the_channel_acted_is_unknown(channel: Channel) -> None:
    """The channel takes the order, then answers later than the adapter waits."""
    driver = channel.driver
    await channel.faults(latency_ms=600)
    impatient = channel.build(timeout_ms=SHORT_TIMEOUT_MS)
    req = channel.payment()
    result = await impatient.create_payment(req)
    assert result_shape(result) == driver.timeout_create
    assert is_left_to_query(result)
    await channel.faults(latency_ms=0)
    view = await wait_for_view(channel, req.channel_order_id, 3)
    assert (view["status"], view["amount"]) == (driver.sim_waiting, 1999)
    queried = await channel.adapter.query_payment(req.channel_order_id)
    assert result_shape(queried) == driver.waiting_query


async def test_connection_dropped_after_sending_is_unknown(channel: Channel) -> None:
    driver = channel.driver

    async def hang_up(request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    await calls_behind(
        channel,
        hang_up,
        create=driver.dropped_create,
        create_attempts=driver.dropped_create_attempts,
        query=driver.dropped_query,
        refund=driver.dropped_refund,
    )


async def test_bad_gateway_in_front_of_the_channel(channel: Channel) -> None:
    """An unsigned 502: whatever stands in front of the channel may have passed the request on
    before it failed, so a create or a refund may have acted."""
    driver = channel.driver

    async def bad_gateway(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text="Bad Gateway")

    await calls_behind(
        channel,
        bad_gateway,
        create=driver.bad_gateway_create,
        create_attempts=driver.bad_gateway_create_attempts,
        query=driver.bad_gateway_query,
        refund=driver.bad_gateway_refund,
    )


async def test_an_unsigned_refusal_in_front_of_the_channel_fails_over(channel: Channel) -> None:
    """An unsigned 4xx (a front door turning the request away) or 429 (its rate limit) came
    before the channel's logic: nothing was created, so a create fails over; a 4xx is not
    tried again, a 429 is."""
    driver = channel.driver
    for status, expected, attempts in driver.unsigned_refusals:

        async def refuse(request: web.Request, status: int = status) -> web.StreamResponse:
            return web.Response(status=status, text="refused in front")

        stub = await channel.stub(refuse)
        adapter = channel.build(base_url=stub.base_url)
        created = await adapter.create_payment(channel.payment())
        assert result_shape(created) == expected, status
        assert (created.outcome, created.decision) == (Outcome.SYSTEM_ERROR, FAILOVER), status
        assert stub.hits == attempts, status
        refund = await adapter.refund(channel.refund_of(channel.payment(), 100))
        assert (refund.outcome, refund.decision) == (Outcome.SYSTEM_ERROR, RETRY), status


async def test_an_answer_with_a_bad_signature_is_not_trusted(
    channel: Channel, tmp_path: Path
) -> None:
    driver = channel.driver
    distrustful = await driver.distrustful_adapter(channel, tmp_path)
    req = channel.payment()
    with structlog.testing.capture_logs() as logs:
        created = await distrustful.create_payment(req)
    assert result_shape(created) == driver.untrusted_create
    assert is_left_to_query(created)
    assert created.next_action is None
    warning = next(e for e in logs if e["event"] == driver.untrusted_log_event)
    assert warning["log_level"] == "warning"
    assert "BEGIN" not in repr(logs)  # no key or certificate material in the log
    # the channel did act, which is why the answer is UNKNOWN and not a failure
    view = await channel.order_view(req.channel_order_id)
    assert view is not None and view["status"] == driver.sim_waiting
    assert result_shape(await channel.adapter.query_payment(req.channel_order_id)) == (
        driver.waiting_query
    )

    queried = await distrustful.query_payment(req.channel_order_id)
    assert result_shape(queried) == driver.untrusted_query
    closed = await distrustful.close_payment(req.channel_order_id)
    assert result_shape(closed) == driver.untrusted_close
    refund = await distrustful.refund(channel.refund_of(req, 100))
    assert result_shape(refund) == driver.untrusted_refund
    assert is_left_open(refund)
    with pytest.raises(driver.untrusted_statement_error):
        await channel.statement(datetime.now(CHINA).date(), distrustful)


async def test_the_channel_refuses_requests_signed_with_another_key(
    channel: Channel, tmp_path: Path
) -> None:
    driver = channel.driver
    adapter = channel.build(**driver.wrong_merchant_key(tmp_path))
    req = channel.payment()
    created = await adapter.create_payment(req)
    assert result_shape(created) == driver.wrong_key_create
    assert created.outcome is Outcome.SYSTEM_ERROR
    assert await channel.order_view(req.channel_order_id) is None


# ---- statements -------------------------------------------------------------------------------


async def test_statement_lists_the_days_payments_and_refunds(fresh_channel: Channel) -> None:
    channel = fresh_channel
    driver, adapter = channel.driver, channel.adapter
    first = await channel.pay(1999)
    refund = channel.refund_of(first.request, 300)
    await adapter.refund(refund)
    await channel.receiver.wait_accepted(first.order_id, REFUND)
    second = await channel.pay(5000)
    unpaid = await channel.create(700)
    cancelled = await channel.create(800)
    await channel.payer(cancelled.payer_url, "cancel")
    today = datetime.now(CHINA).date()

    lines = await channel.statement(today)
    payments = {x.channel_order_id: x for x in lines if x.kind is StatementKind.PAYMENT}
    refunds = [x for x in lines if x.kind is StatementKind.REFUND]
    assert set(payments) == {first.order_id, second.order_id}
    assert len(lines) == 3
    line = payments[first.order_id]
    assert (line.amount, line.status, line.fee) == (
        1999,
        driver.statement_paid_status,
        driver.fee(1999),
    )
    assert line.channel_trade_no == first.notification.result.channel_trade_no
    assert line.occurred_at is not None
    assert abs(line.occurred_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert (payments[second.order_id].amount, payments[second.order_id].fee) == (
        5000,
        driver.fee(5000),
    )
    [refunded] = refunds
    assert (refunded.channel_order_id, refunded.channel_refund_id, refunded.amount) == (
        first.order_id,
        refund.channel_refund_id,
        300,
    )
    assert refunded.status in driver.statement_refund_statuses
    assert all(x.channel_order_id not in (unpaid.order_id, cancelled.order_id) for x in lines)

    ghost = channel.new_order_id()
    fault = driver.statement_status_fault
    await channel.statement_faults(
        missing=[second.order_id],
        extra=[{"channel_order_id": ghost, "amount": 4200}],
        amount={first.order_id: 1998},
        status={first.order_id: fault.channel_status},
    )
    faulty = {(x.kind, x.channel_order_id): x for x in await channel.statement(today)}
    assert set(faulty) == {
        (StatementKind.PAYMENT, first.order_id),
        (StatementKind.REFUND, first.order_id),
        (StatementKind.PAYMENT, ghost),
    }
    changed = faulty[(StatementKind.PAYMENT, first.order_id)]
    assert (changed.amount, changed.status) == (1998, fault.line_status)
    assert faulty[(StatementKind.PAYMENT, ghost)].amount == 4200


async def test_statement_of_other_days(channel: Channel) -> None:
    await channel.pay()
    today = datetime.now(CHINA).date()
    assert await channel.statement(today - timedelta(days=1)) == []
    assert await channel.statement(date(2020, 1, 1)) == []
    future = today + timedelta(days=2)
    if channel.driver.future_statement_unavailable:
        with pytest.raises(StatementUnavailable):
            await channel.statement(future)
    else:
        assert await channel.statement(future) == []


# ---- configuration ----------------------------------------------------------------------------


async def test_config_is_validated_without_leaking_secrets(
    channel: Channel, tmp_path: Path
) -> None:
    driver = channel.driver
    good = channel.config()
    check_config(driver.name, good, str(CONFIG_DIR))
    built = build_adapter(driver.name, "contract", good, channel.context)
    assert built.adapter == driver.name and built.name == "contract"

    secret = "TOPSECRET-0123456789abcdef"
    garbage_key = write(
        tmp_path,
        "garbage.pem",
        f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n".encode(),
    )
    refused: list[tuple[dict[str, object], str]] = [
        ({"surprise": 1}, "surprise"),
        ({"base_url": "ftp://x"}, "base_url"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({driver.private_key_field: "keys/nope.pem"}, ""),
        ({driver.private_key_field: garbage_key}, ""),
        *driver.bad_configs,
    ]
    secrets = [secret]
    for overrides, fragment, member in driver.inline_secrets:
        refused.append((overrides, fragment))
        secrets.append(str(overrides[member]))
    for overrides, fragment in refused:
        config = channel.config(**overrides)
        for attempt in (
            lambda: check_config(driver.name, config, str(CONFIG_DIR)),
            lambda: build_adapter(driver.name, "contract", config, channel.context),
        ):
            with pytest.raises(AdapterConfigError) as info:
                attempt()
            text = f"{info.value} {info.value.errors!r}"
            assert fragment in text, (overrides, text)
            assert info.value.errors, overrides
            for value in secrets:
                assert value not in text, (overrides, text)
