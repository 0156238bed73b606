"""RSA signatures and key material, the same for every channel and simulator.

Every channel here signs with RSASSA-PKCS1-v1_5 over SHA-256 ("SHA256withRSA", Alipay's "RSA2",
WeChat's "WECHATPAY2-SHA256-RSA2048", UnionPay's signMethod 01) and carries the signature in
standard base64. What differs is only the message each signs, which its `protocol.py` builds:
UnionPay's signMethod 01, for one, signs the ASCII hex SHA-256 of its field string, which is a
message like any other here.

One argument order everywhere: the key first, then the message, then (to verify) the signature.
Loading accepts PEM (PKCS#8 or PKCS#1) and the bare base64 DER that channels' consoles show
(Alipay's), and refuses anything but RSA of 2048 bits or more. Errors are `ValueError`s that
say what is wrong and never quote key material.
"""

from __future__ import annotations

import base64
import binascii

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

MIN_RSA_BITS = 2048


def rsa_sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    """SHA256withRSA (PKCS#1 v1.5) over `message`, standard base64."""
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_verify(key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    """Whether `signature` (standard base64) is SHA256withRSA over `message` by `key`."""
    raw = _signature_bytes(signature)
    if raw is None:
        return False
    try:
        key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def rsa_verify_digest(key: rsa.RSAPublicKey, digest: bytes, signature: str) -> bool:
    """`rsa_verify` for a message already hashed with SHA-256 (one too large to hold, hashed
    while it streamed)."""
    raw = _signature_bytes(signature)
    if raw is None:
        return False
    try:
        key.verify(raw, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _signature_bytes(signature: str) -> bytes | None:
    if not signature:
        return None
    try:
        return base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return None


def _der_or_pem(data: bytes) -> tuple[bool, bytes]:
    """(is PEM, bytes): bare base64 is decoded to DER."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        return True, text
    try:
        return False, base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("neither PEM nor base64") from None


def load_private_key(data: bytes, password: bytes | None = None) -> rsa.RSAPrivateKey:
    """An RSA private key of 2048 bits or more from PEM (PKCS#8 or PKCS#1, encrypted when
    `password` is given) or bare base64 DER. Raises ValueError."""
    is_pem, raw = _der_or_pem(data)
    try:
        key = (
            serialization.load_pem_private_key(raw, password=password)
            if is_pem
            else serialization.load_der_private_key(raw, password=password)
        )
    except (ValueError, TypeError):
        raise ValueError("not a readable private key (or a wrong password)") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < MIN_RSA_BITS:
        raise ValueError(f"not an RSA private key of {MIN_RSA_BITS} bits or more")
    return key


def load_public_key(data: bytes) -> rsa.RSAPublicKey:
    """An RSA public key of 2048 bits or more from PEM (SubjectPublicKeyInfo or PKCS#1) or
    bare base64 DER. Raises ValueError."""
    is_pem, raw = _der_or_pem(data)
    try:
        key = (
            serialization.load_pem_public_key(raw)
            if is_pem
            else serialization.load_der_public_key(raw)
        )
    except (ValueError, TypeError):
        raise ValueError("not a readable public key") from None
    return _checked_public(key)


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (cryptography refuses one without any), each holding
    an RSA key of 2048 bits or more. Raises ValueError."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError("not a PEM certificate bundle") from None
    for cert in certs:
        certificate_key(cert)
    return certs


def certificate_key(cert: x509.Certificate) -> rsa.RSAPublicKey:
    """The RSA public key a certificate holds. Raises ValueError."""
    return _checked_public(cert.public_key())


def _checked_public(key: object) -> rsa.RSAPublicKey:
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        raise ValueError(f"not an RSA public key of {MIN_RSA_BITS} bits or more")
    return key


def same_key(private: rsa.RSAPrivateKey, public: rsa.RSAPublicKey) -> bool:
    """Whether `public` is the public half of `private` (a certificate configured with the
    wrong key would have every request refused)."""
    return private.public_key().public_numbers() == public.public_numbers()


def new_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key (development keys and tests)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"), what every channel's SDK reads."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: rsa.RSAPublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM ("BEGIN PUBLIC KEY")."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
