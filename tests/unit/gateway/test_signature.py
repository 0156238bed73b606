from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.auth.signature import (
    KeyType,
    Verifier,
    authorization_header,
    check_timestamp,
    load_public_key,
    parse_authorization,
    sign,
    signed_message,
)
from gateway.domain.errors import AuthFailed


def test_signed_message_is_five_lines_each_ending_in_newline() -> None:
    msg = signed_message("post", "/v1/payments?x=1", 1700000000, "n" * 16, b'{"a":1}')
    assert msg == b'POST\n/v1/payments?x=1\n1700000000\nnnnnnnnnnnnnnnnn\n{"a":1}\n'
    assert (
        signed_message("GET", "/v1/p", 1, "n" * 16, b"") == b"GET\n/v1/p\n1\nnnnnnnnnnnnnnnnn\n\n"
    )


def test_hmac_vector() -> None:
    # a fixed vector computed independently with hmac/hashlib
    message = signed_message("POST", "/v1/payments", 1700000000, "abcdefghijklmnop", b"{}")
    expected = hmac.new(b"sk_test", message, hashlib.sha256).digest()
    assert sign(KeyType.HMAC_SHA256, message, secret="sk_test") == expected
    verifier = Verifier(KeyType.HMAC_SHA256, secret="sk_test")
    assert verifier.verify(message, expected)
    assert not verifier.verify(message + b"x", expected)
    assert not Verifier(KeyType.HMAC_SHA256, secret="sk_other").verify(message, expected)


@pytest.mark.parametrize("key_type", [KeyType.ED25519, KeyType.RSA_SHA256])
def test_asymmetric_sign_and_verify(key_type: KeyType) -> None:
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if key_type is KeyType.ED25519:
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    message = b"GET\n/v1/payments/pay_1\n1\nabcdefghijklmnop\n\n"
    signature = sign(key_type, message, private_key=private)
    verifier = Verifier(key_type, public_key_pem=pem.decode())
    assert verifier.verify(message, signature)
    assert not verifier.verify(message.replace(b"GET", b"PUT"), signature)
    assert not verifier.verify(message, b"\x00" * len(signature))


def test_rsa_keys_below_2048_bits_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = small.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="2048"):
        load_public_key(KeyType.RSA_SHA256, pem)


def test_wrong_key_kind_is_refused() -> None:
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="RSA"):
        load_public_key(KeyType.RSA_SHA256, pem)


def test_header_round_trip() -> None:
    header = authorization_header(KeyType.ED25519, "key_1", 1700000000, "abcdefghijklmnop", b"sig")
    parsed = parse_authorization(header)
    assert parsed.alg == "ED25519"
    assert parsed.key_id == "key_1"
    assert parsed.timestamp == 1700000000
    assert parsed.nonce == "abcdefghijklmnop"
    assert parsed.signature == b"sig"


GOOD_SIG = base64.b64encode(b"x" * 32).decode()


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer abc",
        'GW1-HMAC-SHA256 key_id="k",timestamp="1"',
        f'GW1-HMAC-SHA256 key_id="k",timestamp="abc",nonce="abcdefghijklmnop",signature="{GOOD_SIG}"',
        f'GW1-HMAC-SHA256 key_id="k",timestamp="1",nonce="short",signature="{GOOD_SIG}"',
        f'GW1-HMAC-SHA256 key_id="k",timestamp="1",nonce="has spaces in it!!",signature="{GOOD_SIG}"',
        'GW1-HMAC-SHA256 key_id="k",timestamp="1",nonce="abcdefghijklmnop",signature="***"',
        f'GW1-HMAC-SHA256 key_id="k",key_id="k",timestamp="1",nonce="abcdefghijklmnop",signature="{GOOD_SIG}"',
        f'GW1-HMAC-SHA256 key_id="k",timestamp="1",nonce="abcdefghijklmnop",signature="{GOOD_SIG}",x="1"',
    ],
)
def test_malformed_headers(header: str | None) -> None:
    with pytest.raises(AuthFailed) as info:
        parse_authorization(header)
    assert info.value.code == "malformed_authorization"


def test_timestamp_window() -> None:
    check_timestamp(1000, 1000 + 300)
    check_timestamp(1000, 1000 - 300)
    with pytest.raises(AuthFailed) as info:
        check_timestamp(1000, 1301)
    assert info.value.code == "timestamp_out_of_window"
