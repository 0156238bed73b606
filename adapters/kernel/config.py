"""What every channel's ``config:`` has in common, and how its key files are read.

`ChannelConfig` is the pydantic base every adapter's config model extends: the channel's API
root and the settings of the kernel's call policy, under the same names for every adapter. The
gateway puts the routing file's ``timeout_ms`` of the channel into the config when the config
sets none, so its bounds here are the routing schema's (100 ms to 300 s).

Key and certificate files are named by config fields and resolve against the gateway's config
directory. A file that cannot be used raises `ConfigFieldError`, whose message is
``field: problem`` and never holds key material; `adapters.registry` reports it as is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters.kernel import crypto

MAX_ATTEMPTS_LIMIT = 5
Attempts = Annotated[int, Field(ge=1, le=MAX_ATTEMPTS_LIMIT)]
"""`max_attempts`: a channel whose default differs redeclares the field with this type."""

CallTimeoutMs = Annotated[int, Field(ge=100, le=300_000)]
"""A call budget in milliseconds, bounded as the routing schema bounds a channel's timeout."""

_T = TypeVar("_T")


class ChannelConfig(BaseModel):
    """The settings every channel's ``config:`` shares.

    - ``timeout_ms``: the budget of one call, every attempt and every wait between attempts
      included; an attempt gets what is left of it.
    - ``attempt_timeout_ms``: when set, an attempt that may be followed by another (the call is
      safe to repeat and attempts remain) is cut at this, so that a hung attempt leaves time to
      try again; the last attempt, and one the channel may not repeat, still gets all that is
      left.
    - ``max_attempts``: attempts per call (1 = never repeat).
    - ``retry_backoff_ms``: the wait before a retry is random between 0 and this, doubled for
      every retry (exponential backoff with full jitter), at most ten times it.
    - ``statement_timeout_ms``: the budget of one statement download, in place of
      ``timeout_ms``.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, coerce_numbers_to_str=True
    )

    base_url: str = Field(min_length=1, description="The channel's API root")
    timeout_ms: CallTimeoutMs = 5000
    attempt_timeout_ms: CallTimeoutMs | None = None
    max_attempts: Attempts = 2
    retry_backoff_ms: int = Field(default=50, ge=0, le=10_000)
    statement_timeout_ms: int = Field(default=60_000, ge=1000, le=600_000)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        """An absolute http(s) URL without query or fragment, kept without a trailing slash."""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("base_url must be an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not carry a query or a fragment")
        return value.rstrip("/")


class ConfigFieldError(ValueError):
    """A config field whose file or value cannot be used: ``field: problem``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class MissingFileError(ConfigFieldError, FileNotFoundError):
    """A config field naming a file that does not exist (also a FileNotFoundError)."""


def resolve(config_dir: str, path: str) -> Path:
    """A path from the config, absolute or relative to the gateway's config directory."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(config_dir) / candidate


def read_file(config_dir: str, field: str, path: str) -> bytes:
    """The bytes of the file a config field names. Raises ConfigFieldError."""
    try:
        return resolve(config_dir, path).read_bytes()
    except FileNotFoundError:
        raise MissingFileError(field, f"no such file {path!r}") from None
    except OSError as exc:
        raise ConfigFieldError(field, f"cannot read {path!r} ({type(exc).__name__})") from None


def private_key_file(
    config_dir: str, field: str, path: str, password: bytes | None = None
) -> rsa.RSAPrivateKey:
    """The RSA private key in the file a config field names. Raises ConfigFieldError."""
    return _loaded(
        field,
        lambda data: crypto.load_private_key(data, password),
        read_file(config_dir, field, path),
    )


def public_key_file(config_dir: str, field: str, path: str) -> rsa.RSAPublicKey:
    """The RSA public key in the file a config field names. Raises ConfigFieldError."""
    return _loaded(field, crypto.load_public_key, read_file(config_dir, field, path))


def certificates_file(config_dir: str, field: str, path: str) -> list[x509.Certificate]:
    """The certificates (at least one) in the PEM file a config field names. Raises
    ConfigFieldError."""
    return _loaded(field, crypto.load_certificates, read_file(config_dir, field, path))


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """Our RSA private key, which signs requests, and the channel's RSA public key, which
    verifies its answers and notifications (the bank's and Alipay's key pairs)."""

    own: rsa.RSAPrivateKey
    channel: rsa.RSAPublicKey


def signing_keys(config_dir: str, own: tuple[str, str], channel: tuple[str, str]) -> SigningKeys:
    """The two key files named by ``(field, path)`` pairs. Raises ConfigFieldError."""
    return SigningKeys(
        own=private_key_file(config_dir, *own), channel=public_key_file(config_dir, *channel)
    )


def _loaded(field: str, load: Callable[[bytes], _T], data: bytes) -> _T:
    try:
        return load(data)
    except ValueError as exc:
        raise ConfigFieldError(field, str(exc)) from None
