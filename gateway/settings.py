"""Settings from `GATEWAY_*` environment variables (and an optional `gateway.env` file),
API.md §4.

One more variable is read from the environment only, not from here: PROMETHEUS_MULTIPROC_DIR,
which puts the metrics of every gateway process on the host into one scrape
(`gateway.metrics_multiprocess`); prometheus_client itself reads it when first imported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_WEBHOOK_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_SYNC_SCHEDULE = (10, 30, 60, 300, 900, 1800, 3600)


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
        env_prefix="GATEWAY_", env_file="gateway.env", extra="ignore", frozen=True
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
    key_cache_ttl_s: float = Field(5.0, ge=0)
    """How long a verified merchant key stays cached in the process: a revoked key may still
    be accepted for this long."""
    reuse_port: bool = False
    """SO_REUSEPORT: several gateway processes on one host share the port (the kernel spreads
    connections between them)."""
    background: bool = True
    """Run the background workers (callback dispatcher, routing reload) in this process."""
    migrate_on_start: bool = False
    """Apply the pending migrations when the gateway starts (under the migration lock, so
    several processes starting together apply each once). Off: a gateway whose database lacks
    a migration refuses to start, and `gateway migrate` applies them. `gateway serve --migrate`
    and `gateway demo` turn it on."""

    _check_schedules = field_validator("webhook_retry_schedule", "sync_schedule", mode="before")(
        _parse_schedule
    )
    _check_ports = field_validator("callback_allowed_ports", mode="before")(_parse_ports)

    @property
    def effective_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"
