"""WeChat Pay API v3 pinned by vectors from WeChat's documentation and official SDKs
(tests/golden/data/wechat.json, sources in docs/channels/wechat.md).

The string-to-sign, signatures, AES-GCM and header parsing here are written from the documents,
with `cryptography` directly; the `wechatpayv3` package is the second, independent reader.
Our adapter is exercised only through `build_adapter` and its public calls, against a capturing
server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3 import utils as sdk

from adapters.base import (
    AdapterContext,
    ChannelAdapter,
    CreatePayment,
    IncomingRequest,
    NotificationKind,
    NotificationRejected,
    Outcome,
)
from adapters.registry import AdapterConfigError, build_adapter
from tests.golden.support import Reply, StartServer, openssl_sign, vectors

V = vectors("wechat")
MERCHANT = V["doc_test_merchant"]
PLATFORM = V["sdk_go_platform"]
ORDER = V["doc_native_order"]
NOTIFY = V["doc_transaction_notification"]
APIV3_KEY: str = V["sdk_java_aes"]["apiv3_key"]
SCHEME = "WECHATPAY2-SHA256-RSA2048"
CHINA = timezone(timedelta(hours=8))


# ---- the documents' rules, written here from the documents ----------------------------------


def request_string(method: str, url: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """签名串: five lines, each ending in \\n, the last being the body (empty for GET)."""
    return f"{method}\n{url}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def answer_string(timestamp: str, nonce: str, body: bytes) -> bytes:
    """验签串 of an answer or a notification: three lines, each ending in \\n."""
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def private_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def public_key_of(cert_pem: str) -> rsa.RSAPublicKey:
    key = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    """SHA256 with RSA (PKCS#1 v1.5), base64."""
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def verifies(key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature), message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


_AUTH = re.compile(r'^WECHATPAY2-SHA256-RSA2048 ((?:[a-z_]+="[^"]*",?)+)$')


def authorization_params(header: str) -> dict[str, str]:
    """The Authorization header: the scheme, a space, then k="v" pairs joined by commas."""
    match = _AUTH.match(header)
    assert match, header
    return dict(re.findall(r'([a-z_]+)="([^"]*)"', match.group(1)))


def signed_headers(body: bytes, serial: str, *, timestamp: int | None = None) -> dict[str, str]:
    """The Wechatpay-* headers WeChat Pay puts on an answer or a notification."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
    return {
        "Wechatpay-Timestamp": ts,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature": sign(
            private_key(PLATFORM["private_key_pem"]), answer_string(ts, nonce, body)
        ),
        "Wechatpay-Signature-Type": SCHEME,
    }


def encrypt(key: str, nonce: str, associated_data: str, plaintext: str) -> str:
    """AEAD_AES_256_GCM as the doc describes it: base64(ciphertext || 16-byte tag), the
    12-character nonce and associated_data used as their UTF-8 bytes."""
    sealed = AESGCM(key.encode()).encrypt(
        nonce.encode(), plaintext.encode(), associated_data.encode()
    )
    return base64.b64encode(sealed).decode()


def doc_notification_body(resource: dict[str, Any] | None = None) -> bytes:
    """The doc's TRANSACTION.SUCCESS envelope with its resource encrypted under the APIv3 key."""
    envelope = json.loads(json.dumps(NOTIFY["envelope"]))
    nonce = "fdasflkja484"
    plaintext = json.dumps(
        resource or NOTIFY["resource"], ensure_ascii=False, separators=(",", ":")
    )
    envelope["resource"]["nonce"] = nonce
    envelope["resource"]["ciphertext"] = encrypt(
        APIV3_KEY, nonce, envelope["resource"]["associated_data"], plaintext
    )
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


# ---- the adapter, built from its public config ----------------------------------------------


def build_wechat(
    tmp_path: Path, http: aiohttp.ClientSession, base_url: str, **extra: Any
) -> ChannelAdapter:
    (tmp_path / "merchant_key.pem").write_text(MERCHANT["private_key_pem"])
    (tmp_path / "platform_cert.pem").write_text(PLATFORM["certificate_pem"])
    config = {
        "base_url": base_url,
        "mchid": ORDER["mchid"],
        "appid": ORDER["appid"],
        "merchant_private_key_path": "merchant_key.pem",
        "merchant_cert_serial_no": MERCHANT["serial_no"],
        "platform_cert_path": "platform_cert.pem",
        "apiv3_key": APIV3_KEY,
    } | extra
    return build_adapter(
        "wechat", "wechat_golden", config, AdapterContext(http=http, config_dir=str(tmp_path))
    )


def sdk_client(tmp_path: Path, **public_key_mode: str) -> WeChatPay:
    """The official-SDK reader of the same merchant (certificates from a directory, no network)."""
    cert_dir = tmp_path / "sdk_certs"
    cert_dir.mkdir(exist_ok=True)
    (cert_dir / f"{PLATFORM['serial_no']}.pem").write_text(PLATFORM["certificate_pem"])
    return WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=ORDER["mchid"],
        private_key=MERCHANT["private_key_pem"],
        cert_serial_no=MERCHANT["serial_no"],
        appid=ORDER["appid"],
        apiv3_key=APIV3_KEY,
        cert_dir=str(cert_dir),
        **public_key_mode,
    )


def signed_reply(data: dict[str, Any], status: int = 200) -> Reply:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    headers = signed_headers(body, PLATFORM["serial_no"]) | {"Content-Type": "application/json"}
    return Reply(status=status, body=body, headers=headers)


def native_order() -> CreatePayment:
    return CreatePayment(
        channel_order_id=ORDER["out_trade_no"],
        amount=ORDER["amount"]["total"],
        currency=ORDER["amount"]["currency"],
        method="wechat_qr",
        description=ORDER["description"],
        notify_url=ORDER["notify_url"],
        expires_at=datetime.fromisoformat(ORDER["time_expire"]).astimezone(UTC),
    )


# ---- the vectors agree with our readers of the documents ------------------------------------


def test_doc_string_to_sign_for_get_certificates() -> None:
    v = V["doc_certificates_string_to_sign"]
    built = request_string(
        v["method"], v["url"], v["timestamp"], v["nonce_str"], v["body"].encode()
    )
    assert built == v["string_to_sign"].encode()


def test_doc_body_signature_is_reproduced_by_cryptography_the_sdk_and_openssl(
    tmp_path: Path,
) -> None:
    v = V["doc_body_signature"]
    message = request_string(
        v["method"], v["url"], v["timestamp"], v["nonce_str"], v["body"].encode()
    )
    key = private_key(MERCHANT["private_key_pem"])
    assert sign(key, message) == v["signature"]  # PKCS#1 v1.5 is deterministic
    assert (
        sdk.rsa_sign(sdk.load_private_key(MERCHANT["private_key_pem"]), message.decode())
        == v["signature"]
    )
    (tmp_path / "apiclient_test_key.pem").write_text(MERCHANT["private_key_pem"])
    assert openssl_sign(tmp_path / "apiclient_test_key.pem", message) == v["signature"]
    params = authorization_params(v["authorization"])
    assert params == {
        "mchid": MERCHANT["mchid"],
        "nonce_str": v["nonce_str"],
        "signature": v["signature"],
        "timestamp": v["timestamp"],
        "serial_no": MERCHANT["serial_no"],
    }


def test_sdk_go_signer_vector_and_its_certificate() -> None:
    key = private_key(PLATFORM["private_key_pem"])
    assert sign(key, PLATFORM["message"].encode()) == PLATFORM["signature"]
    cert = x509.load_pem_x509_certificate(PLATFORM["certificate_pem"].encode())
    assert cert.serial_number == int(PLATFORM["serial_no"], 16)
    assert verifies(
        public_key_of(PLATFORM["certificate_pem"]),
        PLATFORM["message"].encode(),
        PLATFORM["signature"],
    )


def test_sdk_go_notification_signature_and_resource() -> None:
    v = V["sdk_go_notification"]
    headers, body = v["headers"], v["body"].encode()
    message = answer_string(headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"], body)
    assert verifies(
        public_key_of(PLATFORM["certificate_pem"]), message, headers["Wechatpay-Signature"]
    )
    assert not verifies(
        public_key_of(PLATFORM["certificate_pem"]),
        message.replace(b"payscore", b"PAYSCORE", 1),
        headers["Wechatpay-Signature"],
    )
    resource = json.loads(body)["resource"]
    sealed = base64.b64decode(resource["ciphertext"])
    plain = AESGCM(v["apiv3_key"].encode()).decrypt(
        resource["nonce"].encode(), sealed, resource["associated_data"].encode()
    )
    assert plain.decode() == v["plaintext"]
    assert (
        sdk.aes_decrypt(
            resource["nonce"], resource["ciphertext"], resource["associated_data"], v["apiv3_key"]
        )
        == v["plaintext"]
    )


def test_sdk_java_aes_256_gcm_vector() -> None:
    v = V["sdk_java_aes"]
    assert len(v["apiv3_key"].encode()) == 32
    assert (
        encrypt(v["apiv3_key"], v["nonce"], v["associated_data"], v["plaintext"]) == v["ciphertext"]
    )
    assert (
        sdk.aes_decrypt(v["nonce"], v["ciphertext"], v["associated_data"], v["apiv3_key"])
        == v["plaintext"]
    )


# ---- our adapter against them ---------------------------------------------------------------


async def test_create_request_is_signed_as_the_doc_says(
    tmp_path: Path, http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    server = await start_server(lambda _: signed_reply(ORDER["answer"]))
    adapter = build_wechat(tmp_path, http, server.base_url)

    result = await adapter.create_payment(native_order())

    sent = server.only_request()
    assert (sent.method, sent.path_qs) == ("POST", "/v3/pay/transactions/native")
    assert sent.headers["Content-Type"].startswith("application/json")
    params = authorization_params(sent.headers["Authorization"])
    assert set(params) == {"mchid", "nonce_str", "signature", "timestamp", "serial_no"}
    assert (params["mchid"], params["serial_no"]) == (ORDER["mchid"], MERCHANT["serial_no"])
    assert abs(int(params["timestamp"]) - time.time()) < 60
    message = request_string(
        "POST", "/v3/pay/transactions/native", params["timestamp"], params["nonce_str"], sent.body
    )
    merchant = private_key(MERCHANT["private_key_pem"])
    assert verifies(merchant.public_key(), message, params["signature"])
    sdk_signature = sdk.rsa_sign(
        sdk.load_private_key(MERCHANT["private_key_pem"]), message.decode()
    )
    assert sdk_signature == params["signature"]

    body = json.loads(sent.body)
    assert body["amount"] == ORDER["amount"]  # integer fen, not yuan
    assert body["time_expire"] == ORDER["time_expire"]  # RFC 3339 in China time
    assert {
        k: body[k] for k in ("appid", "mchid", "description", "out_trade_no", "notify_url")
    } == {k: ORDER[k] for k in ("appid", "mchid", "description", "out_trade_no", "notify_url")}
    assert result.outcome is Outcome.WAITING
    assert result.next_action is not None
    assert (result.next_action.type, result.next_action.url) == (
        "qr_code",
        ORDER["answer"]["code_url"],
    )


async def test_query_signs_path_and_query_with_an_empty_body_and_maps_the_answer(
    tmp_path: Path, http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    server = await start_server(lambda _: signed_reply(NOTIFY["resource"]))
    adapter = build_wechat(tmp_path, http, server.base_url)

    result = await adapter.query_payment(ORDER["out_trade_no"])

    sent = server.only_request()
    url = f"/v3/pay/transactions/out-trade-no/{ORDER['out_trade_no']}?mchid={ORDER['mchid']}"
    assert (sent.method, sent.path_qs, sent.body) == ("GET", url, b"")
    params = authorization_params(sent.headers["Authorization"])
    message = request_string("GET", url, params["timestamp"], params["nonce_str"], b"")
    assert message.endswith(b"\n\n")
    assert verifies(
        private_key(MERCHANT["private_key_pem"]).public_key(), message, params["signature"]
    )

    assert result.outcome is Outcome.SUCCEEDED
    assert result.channel_trade_no == NOTIFY["resource"]["transaction_id"]
    assert result.amount == 100
    assert result.paid_at == datetime(2018, 6, 8, 10, 34, 56, tzinfo=CHINA)


async def test_an_answer_that_does_not_match_its_signature_is_not_trusted(
    tmp_path: Path, http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    genuine = signed_reply({**NOTIFY["resource"], "trade_state": "NOTPAY"})
    forged = Reply(200, genuine.body.replace(b'"NOTPAY"', b'"SUCCESS"'), genuine.headers)
    server = await start_server(lambda _: forged)
    adapter = build_wechat(tmp_path, http, server.base_url)

    result = await adapter.query_payment(ORDER["out_trade_no"])

    assert result.outcome is Outcome.UNKNOWN


async def test_an_unsigned_success_answer_is_not_trusted(
    tmp_path: Path, http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    """The doc: a successful answer (2xx) without a signature is to be taken as forged."""
    body = json.dumps(NOTIFY["resource"]).encode()
    server = await start_server(lambda _: Reply(200, body, {"Content-Type": "application/json"}))
    adapter = build_wechat(tmp_path, http, server.base_url)

    result = await adapter.query_payment(ORDER["out_trade_no"])

    assert result.outcome is Outcome.UNKNOWN


def notification(body: bytes, headers: dict[str, str]) -> IncomingRequest:
    return IncomingRequest(
        method="POST",
        path="/notify/wechat_golden",
        headers=headers,
        body=body,
        content_type="application/json",
    )


async def test_doc_notification_is_verified_decrypted_and_mapped(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    body = doc_notification_body()
    headers = signed_headers(body, PLATFORM["serial_no"])
    reference = sdk_client(tmp_path).callback(headers, body)
    assert reference is not None and reference["resource"] == NOTIFY["resource"]
    adapter = build_wechat(tmp_path, http, "https://api.mch.weixin.qq.com")

    parsed = adapter.parse_notification(notification(body, headers))

    assert parsed.kind is NotificationKind.PAYMENT
    assert parsed.channel_order_id == NOTIFY["resource"]["out_trade_no"]
    assert parsed.result.outcome is Outcome.SUCCEEDED
    assert parsed.result.channel_trade_no == NOTIFY["resource"]["transaction_id"]
    assert parsed.result.amount == 100
    assert parsed.result.paid_at == datetime(2018, 6, 8, 10, 34, 56, tzinfo=CHINA)


async def test_tampered_notifications_are_rejected(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    adapter = build_wechat(tmp_path, http, "https://api.mch.weixin.qq.com")
    reference = sdk_client(tmp_path)
    body = doc_notification_body()
    headers = signed_headers(body, PLATFORM["serial_no"])

    altered = body.replace("支付成功".encode(), "退款成功".encode())
    assert reference.callback(headers, altered) is None
    with pytest.raises(NotificationRejected):
        adapter.parse_notification(notification(altered, headers))

    # re-signed, but the ciphertext itself was altered: the GCM tag must catch it
    envelope = json.loads(body)
    sealed = bytearray(base64.b64decode(envelope["resource"]["ciphertext"]))
    sealed[0] ^= 1
    envelope["resource"]["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    broken = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
    broken_headers = signed_headers(broken, PLATFORM["serial_no"])
    assert reference.callback(broken_headers, broken) is None
    with pytest.raises(NotificationRejected):
        adapter.parse_notification(notification(broken, broken_headers))


async def test_a_notification_outside_the_five_minute_window_is_rejected(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """wechatpay-go's validator refuses timestamps more than five minutes off (validator_test.go
    'time is expire'); the doc tells merchants to do the same."""
    adapter = build_wechat(tmp_path, http, "https://api.mch.weixin.qq.com")
    body = doc_notification_body()
    stale = signed_headers(body, PLATFORM["serial_no"], timestamp=int(time.time()) - 600)
    with pytest.raises(NotificationRejected):
        adapter.parse_notification(notification(body, stale))


async def test_acknowledgements_are_the_docs(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Accepted: HTTP 200 or 204 with no body. Refused (WeChat Pay sends it again): 4xx/5xx
    with {"code":"FAIL","message":"失败"}."""
    adapter = build_wechat(tmp_path, http, "https://api.mch.weixin.qq.com")
    accepted, refused = adapter.ack(True), adapter.ack(False)
    assert accepted.status in (200, 204) and accepted.body == b""
    assert refused.status >= 400
    assert json.loads(refused.body) == NOTIFY["ack_failure_body"]


def test_sdk_accepts_a_public_key_mode_notification(tmp_path: Path) -> None:
    """The doc's public-key-mode message, re-signed with the SDK test key standing in for the
    WeChat Pay public key: the SDK (public_key / public_key_id) verifies it."""
    v = V["doc_public_key_mode"]
    body = doc_notification_body()
    headers = signed_headers(body, v["headers"]["Wechatpay-Serial"])
    public_pem = (
        public_key_of(PLATFORM["certificate_pem"])
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert (
        answer_string(
            v["headers"]["Wechatpay-Timestamp"], v["headers"]["Wechatpay-Nonce"], v["body"].encode()
        )
        == v["string_to_sign"].encode()
    )
    client = sdk_client(
        tmp_path, public_key=public_pem, public_key_id=v["headers"]["Wechatpay-Serial"]
    )
    assert client.callback(headers, body) is not None


@pytest.mark.xfail(
    strict=True,
    raises=AdapterConfigError,
    reason="WeChat Pay public-key mode (Wechatpay-Serial: PUB_KEY_ID_…, verified with the "
    "WeChat Pay public key) is not supported: the config has no public key and the adapter only "
    "knows platform-certificate serials; issue 12 fixes (the config names used here follow the "
    "SDKs' public_key / public_key_id and may change with the fix)",
)
async def test_adapter_verifies_a_public_key_mode_notification(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    v = V["doc_public_key_mode"]
    public_pem = public_key_of(PLATFORM["certificate_pem"]).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "wechatpay_public_key.pem").write_bytes(public_pem)
    adapter = build_wechat(
        tmp_path,
        http,
        "https://api.mch.weixin.qq.com",
        wechatpay_public_key_path="wechatpay_public_key.pem",
        wechatpay_public_key_id=v["headers"]["Wechatpay-Serial"],
    )
    body = doc_notification_body()
    parsed = adapter.parse_notification(
        notification(body, signed_headers(body, v["headers"]["Wechatpay-Serial"]))
    )
    assert parsed.result.outcome is Outcome.SUCCEEDED
