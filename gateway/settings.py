"""Settings from `GATEWAY_*` environment variables (and an optional `gateway.env` file),
API.md §4.

One more variable is read from the environment only, not from here: PROMETHEUS_MULTIPROC_DIR,
which puts the metrics of every gateway process on the host into one scrape
(`gateway.metrics_multiprocess`); prometheus_client itself reads it when first imported."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_WEBHOOK_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_SYNC_SCHEDULE = (10, 30, 60, 300, 900, 1800, 3600)
MIN_ADMIN_TOKEN_LENGTH = 32


def _parse_schedule(value: object) -> object:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts:
            raise ValueError("a schedule needs at least one delay in seconds")
        try:
            delays = tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError("a schedule is comma-separated seconds, e.g. 5,300,1800") from None
        if any(d <= 0 for d in delays):
            raise ValueError("every delay in a schedule must be positive")
        return delays
    return value


def _parse_networks(value: object) -> object:
    if isinstance(value, str):
        try:
            return tuple(ip_network(p.strip()) for p in value.split(",") if p.strip())
        except ValueError as exc:
            raise ValueError(f"not a network (e.g. 10.0.0.0/8, 192.0.2.7): {exc}") from None
    return value


def _parse_ports(value: object) -> object:
    if isinstance(value, str):
        try:
            ports = tuple(int(p) for p in value.split(",") if p.strip())
        except ValueError:
            raise ValueError("ports are comma-separated numbers, e.g. 80,443") from None
        if not ports or any(not 1 <= p <= 65535 for p in ports):
            raise ValueError("at least one port, each from 1 to 65535")
        return ports
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_file="gateway.env",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # a refused value may be a secret (GATEWAY_ADMIN_TOKEN)
    )

    database_url: str | None = None
    """PostgreSQL URL; unset means the embedded PostgreSQL under `var_dir`."""
    redis_url: str | None = None
    """Redis URL; unset means the embedded Redis under `var_dir`."""
    redis_prefix: str = "gw:"
    """Prefix of every Redis key this gateway writes (tests give each run its own)."""
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = None
    """The URL channels and payers reach this gateway at; default http://host:port."""
    routing_file: Path = Path("config/routing.yaml")
    risk_file: Path = Path("config/risk.yaml")
    """Risk rules checked before routing; reloaded like the routing file."""
    config_dir: Path = Path("config")
    """Where adapter keys and certificates named in the routing file are resolved."""
    master_key: SecretStr | None = None
    """32 random bytes, URL-safe base64: encrypts merchants' secrets at rest."""
    admin_token: SecretStr | None = None
    """A bearer token for `/admin/…` with the `admin` role (the `admin-token` identity): 32
    characters at least (`openssl rand -hex 32`)."""
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = tuple(
        float(x) for x in DEFAULT_WEBHOOK_RETRY_SCHEDULE
    )
    sync_schedule: Annotated[tuple[float, ...], NoDecode] = tuple(
        float(x) for x in DEFAULT_SYNC_SCHEDULE
    )
    simulators: bool = False
    sim_notify_time_scale: float = Field(1.0, gt=0)
    callback_allow_private: bool = False
    callback_timeout_s: float = Field(10.0, gt=0)
    # callbacks: destinations and delivery capacity (docs/security.md, "Callbacks")
    callback_allowed_ports: Annotated[tuple[int, ...], NoDecode] = (80, 443)
    """The only ports callbacks go to (`GATEWAY_CALLBACK_ALLOWED_PORTS`, comma-separated);
    any port when `callback_allow_private`."""
    callback_max_per_merchant: int = Field(16, ge=1)
    """Callback attempts in flight at once for one merchant, all gateway processes together."""
    callback_max_per_host: int = Field(8, ge=1)
    """Callback attempts in flight at once to one destination host, all processes together."""
    var_dir: Path = Path("var")
    log_level: str = "info"
    log_json: bool = True
    db_pool_min: int = Field(2, ge=1)
    db_pool_max: int = Field(20, ge=1)
    redis_pool_max: int = Field(64, ge=1)
    """Redis connections per process. A request that finds them all busy waits for one (up
    to `redis_pool_timeout_s`) instead of failing: a burst queues, it does not get 503."""
    redis_pool_timeout_s: float = Field(5.0, gt=0)
    routing_poll_s: float = Field(1.0, gt=0)
    sync_poll_s: float = Field(1.0, gt=0)
    late_payment_auto_refund: bool = False
    """Refund automatically a payment the channel reports paid after the gateway closed it
    (it is always recorded, logged and counted in gateway_late_payments_total)."""
    dispatcher_poll_s: float = Field(1.0, gt=0)
    dispatcher_concurrency: int = Field(32, ge=1)
    key_cache_ttl_s: float = Field(5.0, ge=0, le=60)
    """How long a verified merchant key stays cached in the process: a revoked key may still
    be accepted for this long (at most a minute). A merchant's status and budgets are read
    again after at most 5 s whatever this says."""
    rate_limits_enabled: bool = True
    """Count each merchant's requests against its budgets (API.md §1.7)."""
    rate_limit_payments_per_s: float = Field(100.0, gt=0)
    """Default budget of a merchant's payment creates (`POST /v1/payments`), per second."""
    rate_limit_refunds_per_s: float = Field(20.0, gt=0)
    """Default budget of a merchant's refund creates, per second."""
    rate_limit_other_per_s: float = Field(200.0, gt=0)
    """Default budget of a merchant's other requests (reads included), per second."""
    rate_limit_burst_s: float = Field(2.0, ge=1)
    """How many seconds' worth of its budget a merchant may send at once after a quiet time."""
    auth_failure_limit: int = Field(30, ge=1)
    """Failed authentications a source address may make at once; then it gets this many per
    `auth_failure_window_s`, and its other requests are refused (429) without being
    verified."""
    auth_failure_window_s: float = Field(60.0, gt=0)
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    """Comma-separated networks of the proxies in front of the gateway (e.g. the load
    balancer's, `10.0.0.0/8`): for a request from one of them, the source address is read from
    X-Forwarded-For (its last address outside these networks). Empty: the peer's address."""
    reuse_port: bool = False
    """SO_REUSEPORT: several gateway processes on one host share the port (the kernel spreads
    connections between them)."""
    background: bool = True
    """Run the background workers (callback dispatcher, routing reload) in this process."""
    session_idle_s: float = Field(1800.0, gt=0)
    """A console session unused this long ends."""
    session_max_s: float = Field(43200.0, gt=0)
    """A console session ends this long after its sign-in, however busy."""
    sign_in_max_failures: int = Field(5, ge=1)
    """Failed sign-ins to one account (known or not) that lock it for `sign_in_lockout_s`."""
    sign_in_address_max_failures: int = Field(20, ge=1)
    """Failed sign-ins from one source address that lock it out for `sign_in_lockout_s`."""
    sign_in_lockout_s: float = Field(900.0, gt=0)
    """How long a lock-out lasts, and the window failures are counted in."""
    migrate_on_start: bool = False
    """Apply the pending migrations when the gateway starts (under the migration lock, so
    several processes starting together apply each once). Off: a gateway whose database lacks
    a migration refuses to start, and `gateway migrate` applies them. `gateway serve --migrate`
    and `gateway demo` turn it on."""

    # ---- production safety, the internal listener, master key rotation (API.md §4) ----------
    allow_dev_keys: bool = False
    """Let `gateway serve` start (and the routing file load) although it trusts the development
    keys under config/keys/, points a channel at this gateway's own /sim/, or mounts the
    simulators on a non-loopback host (`gateway.production`). Development and tests only:
    `gateway demo` and `make run` set it."""
    internal_host: str = "127.0.0.1"
    internal_port: int | None = Field(None, ge=0, le=65535)
    """When set, /admin/…, /console/… and /metrics are served on internal_host:internal_port
    only (404 on the main listener); unset, on the main listener."""
    routing_env_allow: Annotated[frozenset[str] | None, NoDecode] = None
    """Comma-separated names: the only environment variables `${NAME}` in the routing file may
    read (with GATEWAY_PUBLIC_URL). Unset: any name outside the gateway's own settings
    (`routing.loader.RoutingEnv`)."""
    master_key_previous: SecretStr | None = None
    """The master key before the last `gateway master-key rotate`: secrets sealed under it
    (by a process still running with it during the rotation) still open. Unset it once every
    process runs with the new key and a second rotate has re-sealed those."""

    @field_validator("routing_env_allow", mode="before")
    @classmethod
    def _parse_names(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(name.strip() for name in value.split(",") if name.strip())
        return value

    @model_validator(mode="after")
    def _check_internal_port(self) -> Settings:
        if self.internal_port is not None and self.internal_port == self.port != 0:
            raise ValueError("GATEWAY_INTERNAL_PORT must differ from GATEWAY_PORT")
        return self

    _check_schedules = field_validator("webhook_retry_schedule", "sync_schedule", mode="before")(
        _parse_schedule
    )
    _check_proxies = field_validator("trusted_proxies", mode="before")(_parse_networks)
    _check_ports = field_validator("callback_allowed_ports", mode="before")(_parse_ports)

    @field_validator("admin_token")
    @classmethod
    def _long_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_ADMIN_TOKEN_LENGTH:
            # the message names the rule, never the value
            raise ValueError(
                f"GATEWAY_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LENGTH} characters"
                " (e.g. `openssl rand -hex 32`)"
            )
        return value

    @property
    def effective_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"
