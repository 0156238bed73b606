"""Production safety (gateway/production.py, API.md §4): the committed development-key
fingerprints are those of config/keys/, every key a channel loads is compared with them however
it is encoded, channels pointed at the gateway's own /sim/ and simulators on a non-loopback
host are named, and GATEWAY_ALLOW_DEV_KEYS turns all of it off. The `gateway serve` processes
that refuse or start: tests/integration/test_production_serve.py."""

from __future__ import annotations

import base64
import datetime
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from adapters.kernel.crypto import new_rsa_key, private_pem, public_pem
from gateway import production
from gateway.services.channels import load_routing_file, routing_holder
from gateway.settings import Settings
from routing.loader import RoutingError, parse_routing
from tests.unit.gateway.production_files import bank_routing, real_bank_keys

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "config"
KEYS = CONFIG / "keys"
SHIPPED = CONFIG / "routing.yaml"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 8080,
        "config_dir": CONFIG,
        "routing_file": SHIPPED,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def real_keys(tmp_path: Path) -> tuple[str, str]:
    return real_bank_keys(tmp_path)


def problems_of(routing: Path, **overrides: Any) -> list[str]:
    s = settings(routing_file=routing, **overrides)
    return production.problems(s, load_routing_file(s))


# ---- the committed fingerprints ----------------------------------------------------------------


def test_the_committed_fingerprints_are_those_of_every_file_under_config_keys() -> None:
    assert production.dev_key_fingerprints(KEYS) == dict(production.DEV_KEY_FINGERPRINTS)
    named = {name for files in production.DEV_KEY_FINGERPRINTS.values() for name in files}
    on_disk = {p.relative_to(KEYS).as_posix() for p in KEYS.rglob("*") if p.suffix != ".md"}
    assert named == {p for p in on_disk if (KEYS / p).is_file()}


def test_a_key_its_other_half_and_a_certificate_over_it_share_one_fingerprint() -> None:
    key = new_rsa_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2026, 1, 1))
        .not_valid_after(datetime.datetime(2036, 1, 1))
        .sign(key, hashes.SHA256())
    )
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    bare_der = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    encodings = [
        private_pem(key),
        pkcs1,
        public_pem(key.public_key()),
        certificate.public_bytes(serialization.Encoding.PEM),
        bare_der,
    ]
    assert len({frozenset(production.fingerprints(data)) for data in encodings}) == 1
    assert len(production.fingerprints(private_pem(key))) == 1
    assert production.fingerprints(private_pem(new_rsa_key())) != production.fingerprints(pkcs1)


# ---- development keys ----------------------------------------------------------------------------


def test_every_channel_of_the_shipped_routing_file_is_named_for_its_development_keys() -> None:
    found = problems_of(SHIPPED)
    loaded = load_routing_file(settings())
    for name in loaded.config.channels:  # the disabled alipay_legacy too
        assert any(f"channels.{name}.config." in p and "development key" in p for p in found), name
    # unionpay_main names no key file: its defaults (the development set) are what it loads
    assert any("channels.unionpay_main.config.sign_key_path: holds a development key" in p
               for p in found)  # fmt: skip
    assert any("channels.wechat_main.config.apiv3_key_path: holds a development key" in p
               for p in found)  # fmt: skip


def test_real_keys_pass_and_a_development_key_is_found_however_it_is_stored(
    tmp_path: Path, real_keys: tuple[str, str]
) -> None:
    private, public = real_keys
    assert problems_of(bank_routing(tmp_path / "real.yaml", private, public)) == []
    # the bank's development public key, copied elsewhere and re-encoded as bare base64 DER
    pem = (KEYS / "bank" / "bank_public.pem").read_bytes()
    der = serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    copied = tmp_path / "innocent.pem"
    copied.write_bytes(base64.b64encode(der))
    found = problems_of(bank_routing(tmp_path / "dev.yaml", private, str(copied)))
    assert found == [
        f"{tmp_path / 'dev.yaml'}: channels.bank_main.config.bank_public_key: holds a development"
        " key shipped under config/keys/ (bank/bank_private.pem, bank/bank_public.pem); use the"
        " channel's real key"
    ]


def test_an_inline_development_secret_is_found() -> None:
    dev_apiv3 = (KEYS / "wechat" / "apiv3_key.txt").read_text().strip()
    loaded = load_routing_file(settings())
    wechat = loaded.config.channels["wechat_main"]
    config = {k: v for k, v in wechat.config.items() if k != "apiv3_key_path"}
    inline = wechat.model_copy(update={"config": {**config, "apiv3_key": dev_apiv3}})
    found = production.dev_key_problems(inline, CONFIG)
    assert any(p.startswith("config.apiv3_key: holds a development key") for p in found)
    assert dev_apiv3 not in " ".join(found)


# ---- the gateway's own simulators ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "overrides", "own"),
    [
        ("http://127.0.0.1:8080/sim/bank", {}, True),
        ("http://localhost:8080/sim/bank", {}, True),
        ("http://[::1]:8080/sim", {}, True),
        ("http://10.0.0.5:8080/sim/bank", {"host": "10.0.0.5"}, True),
        ("https://pay.example.com/sim/bank", {"public_url": "https://pay.example.com"}, True),
        ("https://pay.example.com:443/gw/sim/bank", {"public_url": "https://pay.example.com/gw"},
         True),
        ("http://127.0.0.1:8090/sim/bank", {}, False),  # another process (`gateway simulators`)
        ("http://127.0.0.1:8080/simulate", {}, False),
        ("https://cardgateway.bank.example/sim/bank", {}, False),
    ],
)  # fmt: skip
def test_a_base_url_under_the_gateways_own_sim_is_named(
    tmp_path: Path,
    real_keys: tuple[str, str],
    base_url: str,
    overrides: dict[str, str],
    own: bool,
) -> None:
    routing = bank_routing(tmp_path / "r.yaml", *real_keys, base_url=base_url)
    found = problems_of(routing, **overrides)
    expected = (
        f"{routing}: channels.bank_main.config.base_url: {base_url} is this gateway's own "
        "simulator; point the channel at its real API root"
    )
    assert found == ([expected] if own else [])


# ---- simulators on a non-loopback host ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "simulators", "refused"),
    [
        ("0.0.0.0", True, True),
        ("10.0.0.5", True, True),
        ("gateway.internal", True, True),
        ("0.0.0.0", False, False),
        ("127.0.0.1", True, False),
        ("127.0.0.2", True, False),
        ("::1", True, False),
        ("localhost", True, False),
    ],
)
def test_simulators_are_refused_on_a_non_loopback_host(
    host: str, simulators: bool, refused: bool
) -> None:
    found = production.settings_problems(settings(host=host, simulators=simulators))
    assert bool(found) is refused
    if refused:
        assert found[0].startswith("GATEWAY_SIMULATORS: the channel simulators would be mounted")


def test_allow_dev_keys_turns_every_check_off() -> None:
    unsafe = settings(host="0.0.0.0", simulators=True)
    assert production.problems(unsafe, load_routing_file(unsafe))
    allowed = settings(host="0.0.0.0", simulators=True, allow_dev_keys=True)
    assert production.problems(allowed, load_routing_file(allowed)) == []


def test_the_refusal_names_each_problem_and_the_setting() -> None:
    message = production.refusal(["a: one", "b: two"])
    assert message.splitlines() == [
        "gateway: refusing to start, 2 production safety problems:",
        "  a: one",
        "  b: two",
        "Fix them, or set GATEWAY_ALLOW_DEV_KEYS=true only for development and tests"
        " (`gateway demo` does).",
    ]


# ---- on reload --------------------------------------------------------------------------------------


def test_a_reload_onto_a_development_key_is_refused_and_the_rules_in_force_keep_serving(
    tmp_path: Path, real_keys: tuple[str, str]
) -> None:
    private, public = real_keys
    routing = bank_routing(tmp_path / "routing.yaml", private, public)
    s = settings(routing_file=routing)
    holder = routing_holder(s, production.channel_guard(s))
    version = holder.current.version
    bank_routing(routing, private, str(KEYS / "bank" / "bank_public.pem"))
    assert holder.reload() is False
    assert holder.current.version == version
    assert holder.last_error is not None
    assert "channels.bank_main.config.bank_public_key: holds a development key" in (
        holder.last_error
    )
    with pytest.raises(RoutingError):  # and at start-up, as the gateway builds it
        routing_holder(s, production.channel_guard(s))
    assert routing_holder(s).current.version != version  # without the guard: loads


def test_the_production_example_passes_the_guard() -> None:
    example = CONFIG / "routing.production.example.yaml"
    names = set(re.findall(r"\$\{([A-Z0-9_]+)\}", example.read_text()))
    loaded = parse_routing(example.read_bytes(), example, {n: f"value-of-{n}" for n in names})
    guard = production.channel_guard(settings(host="0.0.0.0"))
    for name, channel in loaded.config.channels.items():
        assert guard(name, channel) == [], name
