"""Alipay's open API (RSA2) pinned by vectors from Alipay's documentation, its official SDKs'
tests and messages signed by Alipay itself (tests/golden/data/alipay.json, sources in
docs/channels/alipay.md).

The strings-to-sign are built here from the documents, signatures checked with `cryptography`
directly; `python-alipay-sdk` (package `alipay`) is the second reader. Our adapter is used only
through `build_adapter` and its public calls, against a capturing server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
from alipay import AliPay
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from adapters.base import (
    AdapterContext,
    ChannelAdapter,
    CreatePayment,
    IncomingRequest,
    NotificationKind,
    NotificationRejected,
    Outcome,
)
from adapters.registry import build_adapter
from tests.golden.support import Reply, StartServer, openssl_sign, vectors

V = vectors("alipay")
JAVA = V["sdk_java_rsa_check"]
REAL_NOTIFY = V["sdk_nodejs_real_notifications"]
DOC_NOTIFY = V["doc_notification"]
PRECREATE = V["doc_precreate"]
CHINA = timezone(timedelta(hours=8))
FORM = "application/x-www-form-urlencoded"


# ---- the documents' rules, written here from the documents ----------------------------------


def request_content(params: Mapping[str, str]) -> str:
    """自行实现签名: every parameter but `sign`, empty values dropped, sorted by name,
    `k=v` joined by `&`, values raw."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] != "")


def notification_content(fields: Mapping[str, str]) -> str:
    """异步通知验签: every field but `sign` and `sign_type` (empty ones included), sorted,
    `k=v` joined by `&`, values URL-decoded."""
    return "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k not in ("sign", "sign_type"))


def pem_of(label: str, base64_body: str) -> str:
    lines = [base64_body[i : i + 64] for i in range(0, len(base64_body), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""])


def private_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def public_key(pem: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def public_pem(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def rsa2_sign(key: rsa.RSAPrivateKey, content: str) -> str:
    """RSA2: SHA256withRSA (PKCS#1 v1.5) over the UTF-8 bytes, standard base64."""
    return base64.b64encode(
        key.sign(content.encode(), padding.PKCS1v15(), hashes.SHA256())
    ).decode()


def rsa2_verifies(key: rsa.RSAPublicKey, content: str, signature: str) -> bool:
    try:
        key.verify(
            base64.b64decode(signature), content.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        return False
    return True


APP_KEY_PEM = pem_of("PRIVATE KEY", JAVA["app_private_key_pkcs8_base64"])
APP_PUBLIC = x509.load_pem_x509_certificate(JAVA["app_certificate_pem"].encode()).public_key()
REAL_ALIPAY_PEM = pem_of("PUBLIC KEY", REAL_NOTIFY["alipay_public_key_base64"])


@pytest.fixture(scope="module")
def alipay_side() -> rsa.RSAPrivateKey:
    """Stands in for Alipay's private key, which is not published, to sign answers and re-sign
    the doc's example notification."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def build_alipay(
    tmp_path: Path, http: aiohttp.ClientSession, base_url: str, app_id: str, alipay_public: str
) -> ChannelAdapter:
    # the app key as the SDK fixture publishes it: bare base64 PKCS#8, as Alipay's key tool writes
    (tmp_path / "app_private_key.txt").write_text(JAVA["app_private_key_pkcs8_base64"])
    (tmp_path / "alipay_public_key.pem").write_text(alipay_public)
    config = {
        "base_url": base_url,
        "app_id": app_id,
        "app_private_key_path": "app_private_key.txt",
        "alipay_public_key_path": "alipay_public_key.pem",
    }
    return build_adapter(
        "alipay", "alipay_golden", config, AdapterContext(http=http, config_dir=str(tmp_path))
    )


def sdk_client(app_id: str, alipay_public: str) -> AliPay:
    return AliPay(
        appid=app_id,
        app_private_key_string=APP_KEY_PEM,
        alipay_public_key_string=alipay_public,
        sign_type="RSA2",
    )


def form(fields: Mapping[str, str]) -> IncomingRequest:
    body = urlencode(list(fields.items()), encoding="utf-8").encode("ascii")
    return IncomingRequest(
        method="POST",
        path="/notify/alipay_golden",
        headers={"Content-Type": f"{FORM}; charset=utf-8"},
        body=body,
        content_type=FORM,
    )


def alipay_answer(name: str, node: Mapping[str, Any], key: rsa.RSAPrivateKey) -> bytes:
    """An answer as Alipay writes it: compact JSON with `/` escaped as `\\/` (as in the real
    answer of sdk_nodejs_real_response), signed over the node's exact text."""
    node_text = json.dumps(node, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")
    return (
        '{"' + name + '":' + node_text + ',"sign":"' + rsa2_sign(key, node_text) + '"}'
    ).encode()


# ---- the vectors agree with our readers of the documents ------------------------------------


@pytest.mark.parametrize("case", JAVA["cases"], ids=["rsa2", "utf8"])
def test_sdk_java_request_signatures_are_reproduced(case: dict[str, Any], tmp_path: Path) -> None:
    content = request_content(case["params"])
    (tmp_path / "app_private_key.pem").write_text(APP_KEY_PEM)
    assert openssl_sign(tmp_path / "app_private_key.pem", content.encode()) == case["sign"]
    assert content.startswith("app_id=2019090366875133&") and content.endswith("&sign_type=RSA2")
    assert rsa2_sign(private_key(APP_KEY_PEM), content) == case["sign"]
    assert isinstance(APP_PUBLIC, rsa.RSAPublicKey)
    assert rsa2_verifies(APP_PUBLIC, content, case["sign"])
    signed = dict(
        parse_qsl(
            sdk_client(JAVA["app_id"], public_pem(APP_PUBLIC)).sign_data(dict(case["params"]))
        )
    )
    assert signed["sign"] == case["sign"]


def test_real_answer_is_signed_over_the_nodes_exact_text() -> None:
    v = V["sdk_nodejs_real_response"]
    key = public_key(v["alipay_public_key_pem"])
    body: str = v["body"]
    sign = json.loads(body)["sign"]
    assert body.index(v["signed_node_text"]) == len(v["response_name"]) + 4
    assert rsa2_verifies(key, v["signed_node_text"], sign)
    # re-serialising the parsed node (without the \/ escapes) does not give the signed text
    reserialised = json.dumps(
        json.loads(body)[v["response_name"]], ensure_ascii=False, separators=(",", ":")
    )
    assert not rsa2_verifies(key, reserialised, sign)
    sdk = sdk_client(JAVA["app_id"], v["alipay_public_key_pem"])
    assert sdk._verify_and_return_sync_response(body, v["response_name"])["image_id"] == (
        "akGwYYaFTai3r1uB0ww-1QAAACMAAQQD"
    )


@pytest.mark.parametrize("index", [0, 1], ids=["with_sign_type", "second"])
def test_real_notifications_verify(index: int) -> None:
    fields = dict(REAL_NOTIFY["notifications"][index])
    key = public_key(REAL_ALIPAY_PEM)
    assert rsa2_verifies(key, notification_content(fields), fields["sign"])
    assert not rsa2_verifies(
        key, notification_content(fields | {"total_amount": "100.00"}), fields["sign"]
    )
    sdk = sdk_client(fields["app_id"], REAL_ALIPAY_PEM)
    signature = fields.pop("sign")
    assert sdk.verify(fields, signature)


def test_doc_example_string_to_sign_differs_only_by_the_gmt_create_it_left_out() -> None:
    built = notification_content(DOC_NOTIFY["fields"])
    assert (
        built.replace(f"gmt_create={DOC_NOTIFY['fields']['gmt_create']}&", "")
        == DOC_NOTIFY["doc_string_to_sign"]
    )


# ---- our adapter against them ---------------------------------------------------------------


def precreate_payment() -> CreatePayment:
    example = PRECREATE["request_example"]
    return CreatePayment(
        channel_order_id=example["out_trade_no"],
        amount=8888,
        currency="CNY",
        method="alipay_qr",
        description=example["subject"],
        notify_url="https://api.xx.com/receive_notify.htm",
        expires_at=datetime.strptime(example["time_expire"], "%Y-%m-%d %H:%M:%S").replace(
            tzinfo=CHINA
        ),
    )


async def test_precreate_request_is_signed_as_the_doc_says(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    start_server: StartServer,
    alipay_side: rsa.RSAPrivateKey,
) -> None:
    answer = alipay_answer("alipay_trade_precreate_response", PRECREATE["answer_node"], alipay_side)
    server = await start_server(
        lambda _: Reply(200, answer, {"Content-Type": "text/html;charset=utf-8"})
    )
    adapter = build_alipay(
        tmp_path, http, server.base_url, JAVA["app_id"], public_pem(alipay_side.public_key())
    )

    result = await adapter.create_payment(precreate_payment())

    sent = server.only_request()
    assert (sent.method, sent.path_qs) == ("POST", "/gateway.do")
    assert sent.headers["Content-Type"].startswith(FORM)
    params = dict(parse_qsl(sent.body.decode("ascii"), keep_blank_values=True, strict_parsing=True))
    assert {
        k: params[k] for k in ("app_id", "method", "format", "charset", "sign_type", "version")
    } == {
        "app_id": JAVA["app_id"],
        "method": "alipay.trade.precreate",
        "format": "JSON",
        "charset": "utf-8",
        "sign_type": "RSA2",
        "version": "1.0",
    }
    datetime.strptime(params["timestamp"], "%Y-%m-%d %H:%M:%S")  # yyyy-MM-dd HH:mm:ss
    assert params["notify_url"] == "https://api.xx.com/receive_notify.htm"
    biz = json.loads(params["biz_content"])
    example = PRECREATE["request_example"]
    assert {k: biz[k] for k in example} == example  # amounts are yuan strings: "88.88"
    assert isinstance(APP_PUBLIC, rsa.RSAPublicKey)
    assert rsa2_verifies(APP_PUBLIC, request_content(params), params["sign"])
    unsigned = {k: v for k, v in params.items() if k != "sign"}
    sdk_signed = dict(
        parse_qsl(
            sdk_client(JAVA["app_id"], public_pem(alipay_side.public_key())).sign_data(unsigned)
        )
    )
    assert sdk_signed["sign"] == params["sign"]

    assert result.outcome is Outcome.WAITING
    assert result.next_action is not None
    assert result.next_action.url == PRECREATE["answer_node"]["qr_code"]  # \/ unescaped


def test_sdk_accepts_the_answer_the_adapter_accepted(alipay_side: rsa.RSAPrivateKey) -> None:
    answer = alipay_answer("alipay_trade_precreate_response", PRECREATE["answer_node"], alipay_side)
    sdk = sdk_client(JAVA["app_id"], public_pem(alipay_side.public_key()))
    assert (
        sdk._verify_and_return_sync_response(answer.decode(), "alipay_trade_precreate_response")
        == (PRECREATE["answer_node"])
    )


async def test_an_answer_that_does_not_match_its_signature_is_not_trusted(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    start_server: StartServer,
    alipay_side: rsa.RSAPrivateKey,
) -> None:
    genuine = alipay_answer(
        "alipay_trade_precreate_response", PRECREATE["answer_node"], alipay_side
    )
    forged = genuine.replace(b"bavh4wjlxf12tper3a", b"attackerscode00000")
    server = await start_server(lambda _: Reply(200, forged))
    adapter = build_alipay(
        tmp_path, http, server.base_url, JAVA["app_id"], public_pem(alipay_side.public_key())
    )

    result = await adapter.create_payment(precreate_payment())

    assert result.outcome is Outcome.UNKNOWN
    assert result.next_action is None


async def test_a_real_alipay_notification_is_verified_and_mapped(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    fields = REAL_NOTIFY["notifications"][0]
    adapter = build_alipay(
        tmp_path, http, "https://openapi.alipay.com", fields["app_id"], REAL_ALIPAY_PEM
    )

    parsed = adapter.parse_notification(form(fields))

    assert parsed.kind is NotificationKind.PAYMENT
    assert parsed.channel_order_id == fields["out_trade_no"]
    assert parsed.result.outcome is Outcome.SUCCEEDED
    assert parsed.result.channel_trade_no == fields["trade_no"]
    assert parsed.result.amount == 10  # "0.10" yuan
    assert parsed.result.paid_at == datetime(2019, 8, 15, 15, 37, 58, tzinfo=CHINA)


async def test_a_tampered_real_notification_is_rejected(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    fields = REAL_NOTIFY["notifications"][0]
    adapter = build_alipay(
        tmp_path, http, "https://openapi.alipay.com", fields["app_id"], REAL_ALIPAY_PEM
    )
    with pytest.raises(NotificationRejected):
        adapter.parse_notification(form(fields | {"total_amount": "100.00"}))
    with pytest.raises(NotificationRejected):
        adapter.parse_notification(form({k: v for k, v in fields.items() if k != "sign"}))


def resigned_doc_notification(
    key: rsa.RSAPrivateKey, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The doc's example (plus `extra`) signed by the rule, and accepted by python-alipay-sdk."""
    fields = dict(DOC_NOTIFY["fields"]) | dict(extra or {})
    signature = rsa2_sign(key, notification_content(fields))
    assert sdk_client(fields["app_id"], public_pem(key.public_key())).verify(
        dict(fields), signature
    )
    return fields | {"sign": signature}


def doc_app_adapter(
    tmp_path: Path, http: aiohttp.ClientSession, key: rsa.RSAPrivateKey
) -> ChannelAdapter:
    app_id = DOC_NOTIFY["fields"]["app_id"]
    pem = public_pem(key.public_key())
    return build_alipay(tmp_path, http, "https://openapi.alipay.com", app_id, pem)


async def test_doc_example_notification_re_signed_is_accepted(
    tmp_path: Path, http: aiohttp.ClientSession, alipay_side: rsa.RSAPrivateKey
) -> None:
    fields = resigned_doc_notification(alipay_side)
    adapter = doc_app_adapter(tmp_path, http, alipay_side)

    parsed = adapter.parse_notification(form(fields))

    assert parsed.channel_order_id == "0719141034-6418"
    assert parsed.result.outcome is Outcome.SUCCEEDED
    assert parsed.result.amount == 200  # "2.00" yuan
    assert parsed.result.paid_at == datetime(2016, 7, 19, 14, 10, 47, tzinfo=CHINA)


@pytest.mark.xfail(
    strict=True,
    raises=NotificationRejected,
    reason="Alipay notification verification drops empty values from the signed string, while "
    "both official SDKs keep them (alipay-sdk-java AlipaySignature.getSignCheckContentV1 and "
    "python-alipay-sdk verify remove only sign and sign_type); issue 12 fixes",
)
async def test_a_notification_with_an_empty_field_is_accepted(
    tmp_path: Path, http: aiohttp.ClientSession, alipay_side: rsa.RSAPrivateKey
) -> None:
    fields = resigned_doc_notification(alipay_side, {"passback_params": ""})
    adapter = doc_app_adapter(tmp_path, http, alipay_side)

    parsed = adapter.parse_notification(form(fields))

    assert parsed.result.outcome is Outcome.SUCCEEDED


async def test_acknowledgement_is_the_plain_text_success(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    adapter = build_alipay(
        tmp_path, http, "https://openapi.alipay.com", JAVA["app_id"], REAL_ALIPAY_PEM
    )
    assert adapter.ack(True).body == V["doc_ack"]["body"].encode()
    assert adapter.ack(False).body != V["doc_ack"]["body"].encode()
