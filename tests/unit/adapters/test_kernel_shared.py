"""What every channel shares besides the call rule: RSA signatures and key loading
(adapters.kernel.crypto), the config base and key files (adapters.kernel.config), China time
(adapters.chinatime), header lookup and the classification of HTTP statuses and transport
exceptions (adapters.kernel.transport). Pure, no network."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from adapters.chinatime import CHINA_TZ, china_date, china_midnight, china_now
from adapters.kernel import crypto
from adapters.kernel.config import (
    ChannelConfig,
    ConfigFieldError,
    MissingFileError,
    certificates_file,
    private_key_file,
    public_key_file,
    read_file,
    resolve,
)
from adapters.kernel.transport import Failure, classify, header, status_failure

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
KEY = crypto.load_private_key((CONFIG_DIR / "keys/bank/merchant_private.pem").read_bytes())
PUBLIC = crypto.load_public_key((CONFIG_DIR / "keys/bank/merchant_public.pem").read_bytes())


# ---- signatures -----------------------------------------------------------------------------


def test_sign_then_verify_key_first() -> None:
    signature = crypto.rsa_sign(KEY, b"message")
    assert crypto.rsa_verify(PUBLIC, b"message", signature)
    assert not crypto.rsa_verify(PUBLIC, b"messagf", signature)
    assert not crypto.rsa_verify(PUBLIC, b"message", "not base64!")
    assert not crypto.rsa_verify(PUBLIC, b"message", "")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not crypto.rsa_verify(other.public_key(), b"message", signature)


def test_signature_is_pkcs1_v15_sha256_in_standard_base64() -> None:
    """The same bytes cryptography's own PKCS#1 v1.5 / SHA-256 gives (deterministic)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    raw = KEY.sign(b"message", padding.PKCS1v15(), hashes.SHA256())
    assert crypto.rsa_sign(KEY, b"message") == base64.b64encode(raw).decode()


def test_verifying_a_digest_equals_verifying_the_message() -> None:
    signature = crypto.rsa_sign(KEY, b"a long statement")
    digest = hashlib.sha256(b"a long statement").digest()
    assert crypto.rsa_verify_digest(PUBLIC, digest, signature)
    assert not crypto.rsa_verify_digest(PUBLIC, hashlib.sha256(b"other").digest(), signature)
    assert not crypto.rsa_verify_digest(PUBLIC, digest, "%%%")


# ---- keys -----------------------------------------------------------------------------------


def _pem(
    key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat, password: bytes | None = None
) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def test_private_keys_load_from_pkcs8_pkcs1_encrypted_and_bare_base64() -> None:
    numbers = KEY.private_numbers()
    for data in (
        _pem(KEY, serialization.PrivateFormat.PKCS8),
        _pem(KEY, serialization.PrivateFormat.TraditionalOpenSSL),
        base64.b64encode(
            KEY.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        ),
    ):
        assert crypto.load_private_key(data).private_numbers() == numbers
    locked = _pem(KEY, serialization.PrivateFormat.PKCS8, b"s3cret")
    assert crypto.load_private_key(locked, b"s3cret").private_numbers() == numbers
    with pytest.raises(ValueError, match="password"):
        crypto.load_private_key(locked, b"wrong")


def test_public_keys_load_from_spki_pkcs1_and_bare_base64() -> None:
    numbers = PUBLIC.public_numbers()
    for fmt in (serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1):
        pem = PUBLIC.public_bytes(serialization.Encoding.PEM, fmt)
        der = PUBLIC.public_bytes(serialization.Encoding.DER, fmt)
        assert crypto.load_public_key(pem).public_numbers() == numbers
        assert crypto.load_public_key(base64.b64encode(der)).public_numbers() == numbers


def test_keys_must_be_rsa_of_2048_bits() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="2048"):
        crypto.load_private_key(_pem(small, serialization.PrivateFormat.PKCS8))
    ec_public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="RSA"):
        crypto.load_public_key(ec_public)
    with pytest.raises(ValueError):
        crypto.load_public_key(b"neither PEM nor base64 !")


def test_certificates_and_the_key_they_hold() -> None:
    pem = (CONFIG_DIR / "keys/wechat/apiclient_cert.pem").read_bytes()
    [cert] = crypto.load_certificates(pem)
    merchant = crypto.load_private_key((CONFIG_DIR / "keys/wechat/apiclient_key.pem").read_bytes())
    assert crypto.same_key(merchant, crypto.certificate_key(cert))
    assert not crypto.same_key(KEY, crypto.certificate_key(cert))
    with pytest.raises(ValueError):
        crypto.load_certificates((CONFIG_DIR / "keys/bank/bank_public.pem").read_bytes())


# ---- key files named by config fields -------------------------------------------------------


def test_key_files_resolve_against_the_config_dir() -> None:
    assert resolve("/etc/gw", "keys/a.pem") == Path("/etc/gw/keys/a.pem")
    assert resolve("/etc/gw", "/abs/a.pem") == Path("/abs/a.pem")
    key = private_key_file(
        str(CONFIG_DIR), "merchant_private_key", "keys/bank/merchant_private.pem"
    )
    assert key.private_numbers() == KEY.private_numbers()
    assert public_key_file(str(CONFIG_DIR), "k", "keys/bank/merchant_public.pem").key_size == 2048
    assert len(certificates_file(str(CONFIG_DIR), "c", "keys/wechat/platform_cert.pem")) == 1


def test_key_file_errors_name_the_field_and_never_the_content(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError) as missing:
        read_file(str(tmp_path), "merchant_private_key", "nope.pem")
    assert isinstance(missing.value, FileNotFoundError)
    assert str(missing.value) == "merchant_private_key: no such file 'nope.pem'"
    assert missing.value.field == "merchant_private_key"
    secret = _pem(
        rsa.generate_private_key(public_exponent=65537, key_size=1024),
        serialization.PrivateFormat.PKCS8,
    )
    (tmp_path / "small.pem").write_bytes(secret)
    with pytest.raises(ConfigFieldError) as small:
        private_key_file(str(tmp_path), "sign_key_path", "small.pem")
    assert str(small.value).startswith("sign_key_path: ")
    assert b"PRIVATE" not in str(small.value).encode()
    (tmp_path / "junk.pem").write_bytes(
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    )
    with pytest.raises(ConfigFieldError, match=r"^bank_public_key: not a readable public key$"):
        public_key_file(str(tmp_path), "bank_public_key", "junk.pem")
    (tmp_path / "dir.pem").mkdir()
    with pytest.raises(ConfigFieldError, match=r"^k: cannot read 'dir\.pem'"):
        read_file(str(tmp_path), "k", "dir.pem")


# ---- the shared config ----------------------------------------------------------------------


def test_the_shared_settings_and_their_bounds() -> None:
    config = ChannelConfig(base_url="https://channel.example/api/")
    assert config.base_url == "https://channel.example/api"
    assert (config.timeout_ms, config.max_attempts, config.retry_backoff_ms) == (5000, 2, 50)
    assert (config.attempt_timeout_ms, config.statement_timeout_ms) == (None, 60_000)
    # the routing schema's bounds of a channel's timeout_ms: 100 ms to 300 s
    assert ChannelConfig(base_url="http://c", timeout_ms=300_000).timeout_ms == 300_000
    assert ChannelConfig(base_url="http://c", timeout_ms=100).timeout_ms == 100
    for bad in (
        {"timeout_ms": 99},
        {"timeout_ms": 300_001},
        {"attempt_timeout_ms": 50},
        {"max_attempts": 0},
        {"max_attempts": 6},
        {"retry_backoff_ms": -1},
        {"base_url": "ftp://c"},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            ChannelConfig.model_validate({"base_url": "http://c", **bad})


def test_ids_written_as_numbers_in_yaml_are_read_as_text() -> None:
    class Config(ChannelConfig):
        merchant: str

    assert Config(base_url="http://c", merchant=1900000109).merchant == "1900000109"


def test_validation_errors_do_not_echo_the_input() -> None:
    class Config(ChannelConfig):
        key: int

    with pytest.raises(ValidationError) as info:
        Config.model_validate({"base_url": "http://c", "key": "S3cret-value"})
    assert "S3cret-value" not in str(info.value)


# ---- China time -----------------------------------------------------------------------------


def test_china_time_is_utc_plus_eight() -> None:
    moment = datetime(2024, 12, 31, 16, 30, tzinfo=UTC)
    assert CHINA_TZ.utcoffset(None) == timedelta(hours=8)
    assert china_date(moment) == date(2025, 1, 1)
    assert china_midnight(date(2025, 1, 1)) == datetime(2024, 12, 31, 16, tzinfo=UTC)
    assert china_now(lambda: moment).isoformat() == "2025-01-01T00:30:00+08:00"
    assert abs(china_now() - datetime.now(UTC)) < timedelta(seconds=5)


# ---- HTTP -----------------------------------------------------------------------------------


def test_header_lookup_ignores_case() -> None:
    headers = {"X-Bank-Signature": "s", "content-type": "text/plain"}
    assert header(headers, "x-bank-signature") == "s"
    assert header(headers, "Content-Type") == "text/plain"
    assert header(headers, "X-Missing") is None


@pytest.mark.parametrize(
    ("status", "before_processing", "failure"),
    [
        (200, False, Failure.BAD_SIGNATURE),  # a success must be signed
        (302, False, Failure.HTTP_REFUSED),
        (401, False, Failure.HTTP_REFUSED),
        (404, True, Failure.HTTP_REFUSED),
        (429, False, Failure.HTTP_UNAVAILABLE),
        (500, False, Failure.HTTP_ERROR),
        (502, False, Failure.HTTP_ERROR),
        (504, False, Failure.HTTP_ERROR),
        (502, True, Failure.HTTP_UNAVAILABLE),
    ],
)
def test_an_unsigned_status_is_judged_by_what_it_can_mean(
    status: int, before_processing: bool, failure: Failure
) -> None:
    assert status_failure(status, errors_before_processing=before_processing) is failure


def test_what_each_failure_says_about_the_channel() -> None:
    cannot_have_acted = {Failure.NOT_SENT, Failure.HTTP_REFUSED, Failure.HTTP_UNAVAILABLE}
    assert {f for f in Failure if not f.may_have_acted} == cannot_have_acted
    would_not_change = {Failure.HTTP_REFUSED, Failure.BAD_SIGNATURE, Failure.BAD_ANSWER}
    assert {f for f in Failure if not f.transient} == would_not_change


def test_transport_exceptions_are_classified() -> None:
    connection_key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
    refused = aiohttp.ClientConnectorError(connection_key, ConnectionRefusedError(111, "refused"))
    assert classify(refused) is Failure.NOT_SENT
    assert classify(aiohttp.ConnectionTimeoutError()) is Failure.NOT_SENT
    assert classify(aiohttp.SocketTimeoutError()) is Failure.TIMEOUT
    assert classify(TimeoutError()) is Failure.TIMEOUT
    assert classify(aiohttp.ServerDisconnectedError()) is Failure.DROPPED
    assert classify(aiohttp.ClientPayloadError()) is Failure.DROPPED
    assert classify(KeyError()) is None
