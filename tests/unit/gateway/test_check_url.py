"""Where callbacks may go (issue 13, API.md §1.6): the destination rules as the API and the
dispatcher apply them (`check_url`, `DestinationPolicy`), the resolver that checks every address
a name resolves to, what the merchant is told of a failure, and the ports setting. Pure: no
servers (the resolver's own lookups are replaced by a fixed answer)."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import ValidationError

from gateway.domain.models import DESTINATIONS, CreateWebhookEndpointRequest
from gateway.domain.webhooks import DestinationPolicy, public_address
from gateway.services.callbacks import (
    DestinationRefused,
    NonPublicAddress,
    PublicOnlyResolver,
    check_url,
    failure_kind,
)
from gateway.settings import Settings

STRICT = DestinationPolicy()
PRIVATE_ALLOWED = DestinationPolicy(allow_private=True)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        # inet_aton reads each of these as 127.0.0.1 (or 0.0.0.0): not canonical
        ("http://2130706433/h", "2130706433 is not an IPv4 address in canonical form (a.b.c.d)"),
        ("http://127.1/h", "127.1 is not an IPv4 address in canonical form (a.b.c.d)"),
        ("http://0/h", "0 is not an IPv4 address in canonical form (a.b.c.d)"),
        ("http://0177.0.0.1/h", "0177.0.0.1 is not an IPv4 address in canonical form (a.b.c.d)"),
        ("http://0x7f.1/h", "0x7f.1 is not an IPv4 address in canonical form (a.b.c.d)"),
        ("http://0X7F000001/h", "0x7f000001 is not an IPv4 address in canonical form (a.b.c.d)"),
        (
            "http://017700000001/h",
            "017700000001 is not an IPv4 address in canonical form (a.b.c.d)",
        ),
        ("http://127.0.0.1./h", "127.0.0.1. is not an IPv4 address in canonical form (a.b.c.d)"),
        ("http://1.2.3.4.5/h", "1.2.3.4.5 is not an IPv4 address in canonical form (a.b.c.d)"),
        ("http://shop.0x1f/h", "shop.0x1f is not an IPv4 address in canonical form (a.b.c.d)"),
        # what the HTTP client's IDNA folds into an address is that address
        ("http://１２７.０.０.１/h", "１２７.０.０.１ is not a public address"),
        ("http://①②⑦.0.0.1/h", "①②⑦.0.0.1 is not a public address"),
        ("http://１２７.1/h", "１２７.1 is not an IPv4 address in canonical form (a.b.c.d)"),
        # IPv4 literals outside the public ranges
        ("http://127.0.0.1/h", "127.0.0.1 is not a public address"),
        ("http://10.0.0.1/h", "10.0.0.1 is not a public address"),
        ("http://100.64.0.1/h", "100.64.0.1 is not a public address"),  # shared (CGN)
        ("http://169.254.169.254/latest", "169.254.169.254 is not a public address"),
        ("http://192.0.0.8/h", "192.0.0.8 is not a public address"),
        ("http://198.18.0.1/h", "198.18.0.1 is not a public address"),
        ("http://203.0.113.9/h", "203.0.113.9 is not a public address"),  # documentation
        ("http://224.0.0.1/h", "224.0.0.1 is not a public address"),
        ("http://240.0.0.1/h", "240.0.0.1 is not a public address"),
        ("http://255.255.255.255/h", "255.255.255.255 is not a public address"),
        ("http://0.0.0.0/h", "0.0.0.0 is not a public address"),
        # IPv6: what ipaddress calls non-global, and the ranges that carry IPv4 inside
        ("http://[::1]/h", "::1 is not a public address"),
        ("http://[::]/h", ":: is not a public address"),
        ("http://[fe80::1%25eth0]/h", "fe80::1%25eth0 is not a public address"),
        ("http://[fc00::1]/h", "fc00::1 is not a public address"),
        ("http://[ff02::1]/h", "ff02::1 is not a public address"),
        ("http://[2001:db8::1]/h", "2001:db8::1 is not a public address"),
        ("http://[::ffff:127.0.0.1]/h", "::ffff:127.0.0.1 is not a public address"),
        ("http://[::ffff:8.8.8.8]/h", "::ffff:8.8.8.8 is not a public address"),
        ("http://[::ffff:0:7f00:1]/h", "::ffff:0:7f00:1 is not a public address"),
        ("http://[::7f00:1]/h", "::7f00:1 is not a public address"),
        ("http://[::808:808]/h", "::808:808 is not a public address"),
        ("http://[2002:7f00:1::]/h", "2002:7f00:1:: is not a public address"),
        ("http://[2002:808:808::1]/h", "2002:808:808::1 is not a public address"),
        ("http://[64:ff9b::808:808]/h", "64:ff9b::808:808 is not a public address"),
        ("http://[64:ff9b:1::a00:1]/h", "64:ff9b:1::a00:1 is not a public address"),
        ("http://[fec0::1]/h", "fec0::1 is not a public address"),
        ("http://[2001:0:4136:e378::1]/h", "2001:0:4136:e378::1 is not a public address"),
        # ports
        ("https://shop.example:8443/h", "port 8443 is not allowed (allowed: 80, 443)"),
        ("http://8.8.8.8:22/h", "port 22 is not allowed (allowed: 80, 443)"),
        ("https://shop.example:80/h", None),
        # not a URL callbacks go to
        ("ftp://shop.example/h", "not an absolute http(s) URL"),
        ("/relative", "not an absolute http(s) URL"),
        ("http://user:pw@shop.example/h", "the URL carries credentials"),
        ("http://[::1/h", "not a valid URL"),
        ("http://shop.example:99999/h", "not a valid URL"),
        ("http://a..b/h", "a..b is not a valid host name"),
    ],
)
def test_refused_by_default(url: str, reason: str | None) -> None:
    if reason is None:
        assert check_url(url, STRICT).port == 80
        return
    with pytest.raises(DestinationRefused) as refused:
        check_url(url, STRICT)
    assert str(refused.value) == reason


@pytest.mark.parametrize(
    ("url", "host", "port", "address"),
    [
        ("https://shop.example/h", "shop.example", 443, None),
        ("http://Shop.Example/h", "shop.example", 80, None),
        ("https://例子.测试/notify", "xn--fsqu00a.xn--0zwm56d", 443, None),
        ("https://8.8.8.8/h", "8.8.8.8", 443, "8.8.8.8"),
        ("https://[2606:4700:4700::1111]/h", "2606:4700:4700::1111", 443, "2606:4700:4700::1111"),
        ("http://shop.example.:80/h", "shop.example.", 80, None),  # a fully qualified name
        ("https://api.2shop.example/h", "api.2shop.example", 443, None),
    ],
)
def test_allowed_by_default(url: str, host: str, port: int, address: str | None) -> None:
    destination = check_url(url, STRICT)
    assert (destination.host, destination.port, destination.address) == (host, port, address)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/h", "http://[::1]:9/h", "http://10.0.0.1:22/h", "http://localhost:1/h",
     "http://１２７.０.０.１:8080/h", "http://169.254.169.254/latest"],
)  # fmt: skip
def test_private_destinations_allowed_take_any_address_and_port(url: str) -> None:
    check_url(url, PRIVATE_ALLOWED)


@pytest.mark.parametrize(
    "url", ["http://127.1/h", "http://2130706433:8080/h", "http://0x7f.1/h", "ftp://localhost/"]
)
def test_non_canonical_addresses_are_refused_even_with_private_destinations_allowed(
    url: str,
) -> None:
    with pytest.raises(DestinationRefused):
        check_url(url, PRIVATE_ALLOWED)


def test_allowed_ports_widen_the_default() -> None:
    wider = DestinationPolicy.of(
        False, Settings(callback_allowed_ports="443,8443").callback_allowed_ports
    )
    check_url("https://shop.example:8443/h", wider)
    with pytest.raises(DestinationRefused, match="port 80 is not allowed"):
        check_url("http://shop.example/h", wider)
    assert Settings().callback_allowed_ports == (80, 443)
    for bad in ("", "80,http", "0", "65536"):
        with pytest.raises(ValidationError):
            Settings(callback_allowed_ports=bad)


def test_the_api_checks_urls_against_the_policy_it_is_given() -> None:
    body = {"url": "http://127.0.0.1:8080/h", "events": ["payment.succeeded"]}
    with pytest.raises(ValidationError, match=r"127\.0\.0\.1 is not a public address"):
        CreateWebhookEndpointRequest.model_validate(body)  # no policy given: the strict one
    allowed = CreateWebhookEndpointRequest.model_validate(
        body, context={DESTINATIONS: PRIVATE_ALLOWED}
    )
    assert allowed.url == body["url"]


def test_public_addresses() -> None:
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2001:4860:4860::8888"):
        assert public_address(address), address
    for address in ("127.0.0.1", "::1", "fe80::1%eth0", "not an address", "2002:808:808::"):
        assert not public_address(address), address


class FixedAnswer(AbstractResolver):
    """A resolver that answers every name with the given addresses (DNS as an attacker who
    owns the name sets it)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups += 1
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_a_name_is_refused_if_any_of_its_addresses_is_not_public() -> None:
    for addresses in (("127.0.0.1",), ("8.8.8.8", "10.0.0.7"), ("2606:4700::1", "::ffff:7f00:1")):
        resolver = PublicOnlyResolver(STRICT, FixedAnswer(*addresses))
        with pytest.raises(NonPublicAddress) as refused:
            await resolver.resolve("rebind.example", 443)
        assert refused.value.addresses == list(addresses)


async def test_the_resolver_returns_exactly_what_it_checked() -> None:
    """aiohttp connects to these results and looks nothing up again: the checked answer is the
    one connected to."""
    inner = FixedAnswer("8.8.8.8", "2606:4700:4700::1111")
    results = await PublicOnlyResolver(STRICT, inner).resolve("shop.example", 443)
    assert [r["host"] for r in results] == ["8.8.8.8", "2606:4700:4700::1111"]
    assert inner.lookups == 1


def test_what_the_merchant_is_told_of_a_failure() -> None:
    key = aiohttp.client_reqrep.ConnectionKey(
        "internal.example", 6379, False, True, None, None, None
    )
    refused = aiohttp.ClientConnectorDNSError(
        key, NonPublicAddress("internal.example", ["10.0.0.5"])
    )
    unknown = aiohttp.ClientConnectorDNSError(key, OSError(-2, "Name or service not known"))
    closed = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connect call failed"))
    kinds = {failure_kind(e, 10) for e in (refused, unknown, closed)}
    assert kinds == {"connection failed"}  # a refused name reads like a name that failed
    assert failure_kind(TimeoutError(), 2.5) == "timed out after 2.5 s"
    assert (
        failure_kind(aiohttp.ServerDisconnectedError(), 10) == "connection closed before an answer"
    )
    assert failure_kind(RuntimeError("10.0.0.5:6379 said -ERR"), 10) == "delivery failed"
