"""Production safety (API.md §4): what keeps `gateway serve` from starting — and a routing file
from loading — with the development set-up.

- **Development keys.** The shipped routing file trusts the development keys under
  `config/keys/`, whose private halves are in the repository: anyone could sign a bank
  notification and mark a payment paid. Every key, certificate and secret a channel's config
  loads (the files its fields name, defaults included, and inline values such as an APIv3 key)
  is fingerprinted and compared with `DEV_KEY_FINGERPRINTS`, the committed fingerprints of
  everything under `config/keys/` (committed, so the check holds in an image without those
  files; a test keeps the list equal to the files). A key is fingerprinted by its public half
  (SHA-256 of the SubjectPublicKeyInfo DER), so a private key, its public key and a certificate
  over it all match, whatever their encoding; anything else by the SHA-256 of its bytes,
  surrounding whitespace stripped.
- **Channels pointing at this gateway's own simulators** (`base_url` under its public URL or
  its host:port, then `/sim/`).
- **Simulators mounted on a non-loopback host.**

`GATEWAY_ALLOW_DEV_KEYS=true` (development and tests; `gateway demo` sets it) turns all three
off. The checks are pure but for reading the key files the config names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import ipaddress
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from pydantic import BaseModel, SecretStr, ValidationError

from adapters.registry import ADAPTERS
from gateway.settings import Settings
from routing.loader import ChannelCheck, LoadedRouting
from routing.schema import ChannelConfig

DEV_KEY_FINGERPRINTS: Mapping[str, tuple[str, ...]] = {
    # fingerprint: the files under config/keys/ it comes from (`dev_key_fingerprints`)
    "04906e12134bf102915db2077aae8407699e5ded535b699da38d488f7609a130": (
        "wechat/apiclient_cert.pem",
        "wechat/apiclient_key.pem",
    ),
    "0ca47b96bf64140945e25f9c5c1ccfbf984b427c729365b2b9aa2a4c9a92e5d9": (
        "bank/merchant_private.pem",
        "bank/merchant_public.pem",
    ),
    "189df6de776bdfeaf07f670dce9417e0f0f3bbbba7ab9a200c5c70511569bc80": (
        "alipay/app_private_key.pem",
        "alipay/app_public_key.pem",
    ),
    "2b38858333efd4b45fea3d3053cd2cb7443cfca485c46f4dea93784b0c7478c9": (
        "bank/bank_private.pem",
        "bank/bank_public.pem",
    ),
    "54be94b252419761173c27bd982ebdd2844c53cac070faf1d4d669a915e56348": (
        "unionpay/unionpay_sign_cert.pem",
        "unionpay/unionpay_sign_key.pem",
    ),
    "63685b57f166ca716f00ad76047fc634a78b3e84410d7e361270114e0cf6c9a2": (
        "unionpay/merchant_sign_cert.pem",
        "unionpay/merchant_sign_key.pem",
    ),
    "65c9503b3124fc7196af693bc82e5df73c75df1c7692db602fa45348deb5ec76": (
        "alipay/alipay_private_key.pem",
        "alipay/alipay_public_key.pem",
    ),
    "6e1711ed5bca74493e9783301b82e285c48e90ad006800dafbae6c0237ee1faa": ("unionpay/root_ca.pem",),
    "70f5ae05a2dbcf97e716afffb6061958b30b5c941c8bb0bb4dc9362315aca28a": ("wechat/apiv3_key.txt",),
    "8a27d6615a638dfaac831b85a4bec10df06755b8c3761e2bf98dff7d55727e2a": ("unionpay/middle_ca.pem",),
    "b69a2e4455a2f84a6bfa643ba9af89a6fde6d9beee530f7fa4230cbe541e538c": (
        "wechat/platform_cert.pem",
        "wechat/platform_key.pem",
    ),
}
"""SHA-256 fingerprints of the development keys, certificates and secrets under config/keys/
(see the module's docstring), each with the files it comes from."""

ALLOW_HINT = "set GATEWAY_ALLOW_DEV_KEYS=true only for development and tests (`gateway demo` does)"

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names of every interface


# ---- fingerprints ---------------------------------------------------------------------------


def _public_fingerprint(key: PublicKeyTypes) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _pem_fingerprint(label: bytes, block: bytes) -> str | None:
    """The fingerprint of one PEM block's key, or None for a block that holds none (or an
    encrypted private key, whose certificate is fingerprinted instead)."""
    try:
        if label == b"CERTIFICATE":
            return _public_fingerprint(x509.load_pem_x509_certificate(block).public_key())
        if label.endswith(b"PRIVATE KEY") and not label.startswith(b"ENCRYPTED"):
            key = serialization.load_pem_private_key(block, password=None)
            return _public_fingerprint(key.public_key())
        if label.endswith(b"PUBLIC KEY"):
            return _public_fingerprint(serialization.load_pem_public_key(block))
    except (ValueError, TypeError):
        return None
    return None


def _der_fingerprint(data: bytes) -> str | None:
    """The fingerprint of a key written as bare base64 DER (as Alipay's tools write them)."""
    try:
        der = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        return _public_fingerprint(serialization.load_der_public_key(der))
    except (ValueError, TypeError):
        pass
    try:
        return _public_fingerprint(
            serialization.load_der_private_key(der, password=None).public_key()
        )
    except (ValueError, TypeError):
        return None


def fingerprints(data: bytes) -> set[str]:
    """The fingerprints of key material: one per key in its PEM blocks, else that of a bare
    base64 DER key, else the SHA-256 of the stripped bytes (a secret such as an APIv3 key)."""
    blocks = [match for match in _PEM_BLOCK.finditer(data)]
    if blocks:
        found = {_pem_fingerprint(match.group(1), match.group(0)) for match in blocks}
        return {fingerprint for fingerprint in found if fingerprint is not None}
    der = _der_fingerprint(data)
    return {der} if der is not None else {hashlib.sha256(data.strip()).hexdigest()}


def dev_key_fingerprints(keys_dir: Path) -> dict[str, tuple[str, ...]]:
    """What `DEV_KEY_FINGERPRINTS` must hold, computed from the files under `keys_dir`
    (README files aside): fingerprint -> the files it comes from, relative to `keys_dir`."""
    sources: dict[str, list[str]] = {}
    for path in sorted(keys_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() != ".md":
            for fingerprint in fingerprints(path.read_bytes()):
                sources.setdefault(fingerprint, []).append(path.relative_to(keys_dir).as_posix())
    return {fingerprint: tuple(files) for fingerprint, files in sorted(sources.items())}


# ---- the checks -----------------------------------------------------------------------------


def _strings(value: object) -> Iterator[str]:
    """Every string in a config field's value, secrets included."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _validated_config(channel: ChannelConfig) -> BaseModel | None:
    """The channel's config as its adapter reads it (defaults filled in), or None when the
    adapter refuses it (the adapter's own check reports that)."""
    if channel.adapter not in ADAPTERS:
        return None
    module = importlib.import_module(f"adapters.{channel.adapter}.adapter")
    model = cast(type[BaseModel], module.CONFIG_MODEL)
    try:
        return model.model_validate(dict(channel.config))
    except ValidationError:
        return None


def _material(config_dir: Path, value: str) -> bytes:
    """The bytes a config value stands for: the file it names when there is one (absolute or
    relative to the config directory), else the value itself."""
    if 0 < len(value) < 4096 and "\n" not in value:
        candidate = Path(value)
        path = candidate if candidate.is_absolute() else config_dir / candidate
        try:
            if path.is_file():
                return path.read_bytes()
        except OSError:  # unreadable: the adapter's check names it
            pass
    return value.encode()


def dev_key_problems(channel: ChannelConfig, config_dir: Path) -> list[str]:
    """``config.<field>: …`` for every development key, certificate or secret the channel's
    config loads."""
    config = _validated_config(channel)
    if config is None:
        return []
    problems = []
    for field in type(config).model_fields:
        for value in _strings(getattr(config, field)):
            for fingerprint in sorted(fingerprints(_material(config_dir, value))):
                files = DEV_KEY_FINGERPRINTS.get(fingerprint)
                if files is not None:
                    problems.append(
                        f"config.{field}: holds a development key shipped under config/keys/"
                        f" ({', '.join(files)}); use the channel's real key"
                    )
    return problems


def _origin(host: str, port: int | None, scheme: str) -> tuple[str, int]:
    """(host, port) of a URL, the port defaulted by its scheme."""
    default = 443 if scheme == "https" else 80
    return host.lower().strip("[]"), default if port is None else port


def _is_loopback(host: str) -> bool:
    name = host.lower().strip("[]")
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _own_simulator_roots(settings: Settings) -> list[tuple[str, int, str]]:
    """(host, port, path) under which this gateway mounts its simulators: its public URL's,
    and its listening host:port's (any loopback name when it listens on loopback or on every
    interface)."""
    public = urlsplit(settings.effective_public_url)
    roots = [(*_origin(public.hostname or "", public.port, public.scheme), public.path + "/sim")]
    hosts = {settings.host.lower()}
    if settings.host in _WILDCARDS or _is_loopback(settings.host):
        hosts |= {"127.0.0.1", "::1", "0.0.0.0", "::", *_LOOPBACK_NAMES}  # noqa: S104
    roots += [(host.strip("[]"), settings.port, "/sim") for host in sorted(hosts)]
    return roots


def self_pointing_problems(channel: ChannelConfig, settings: Settings) -> list[str]:
    """``config.base_url: …`` when the channel's API root is this gateway's own /sim/."""
    base_url = channel.config.get("base_url")
    if not isinstance(base_url, str):
        return []
    parts = urlsplit(base_url)
    try:
        target = (*_origin(parts.hostname or "", parts.port, parts.scheme), parts.path)
    except ValueError:  # a port out of range: the adapter's check refuses the URL
        return []
    for host, port, root in _own_simulator_roots(settings):
        if target[:2] == (host, port) and (target[2] == root or target[2].startswith(root + "/")):
            return [
                f"config.base_url: {base_url} is this gateway's own simulator; "
                "point the channel at its real API root"
            ]
    return []


def channel_guard(settings: Settings) -> ChannelCheck:
    """The production checks of one channel, given to the routing pipeline so that a reloaded
    file is refused as a file at start-up is (paths relative to the channel)."""
    config_dir = Path(settings.config_dir)

    def check(name: str, channel: ChannelConfig) -> list[str]:
        return dev_key_problems(channel, config_dir) + self_pointing_problems(channel, settings)

    return check


def settings_problems(settings: Settings) -> list[str]:
    """What in the settings alone is unsafe in production."""
    if settings.simulators and not _is_loopback(settings.host):
        return [
            f"GATEWAY_SIMULATORS: the channel simulators would be mounted on {settings.host!r},"
            " a non-loopback host (anyone reaching it can pay any payment); unset"
            " GATEWAY_SIMULATORS or listen on 127.0.0.1"
        ]
    return []


def problems(settings: Settings, routing: LoadedRouting) -> list[str]:
    """Every reason `gateway serve` refuses to start with these settings and this routing file
    (none with GATEWAY_ALLOW_DEV_KEYS=true)."""
    if settings.allow_dev_keys:
        return []
    guard = channel_guard(settings)
    found = settings_problems(settings)
    for name, channel in routing.config.channels.items():
        found += [f"{routing.path}: channels.{name}.{problem}" for problem in guard(name, channel)]
    return found


def refusal(found: list[str]) -> str:
    """The message `gateway serve` exits with."""
    count = len(found)
    lines = [f"gateway: refusing to start, {count} production safety problem{'s' * (count != 1)}:"]
    lines += [f"  {problem}" for problem in found]
    lines.append(f"Fix them, or {ALLOW_HINT}.")
    return "\n".join(lines)
