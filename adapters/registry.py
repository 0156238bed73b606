"""Finds a channel's adapter and simulator by adapter name (`bank`, `wechat`, ...).

Each channel package provides, in `adapter.py`, `CONFIG_MODEL` (its config model, a
`adapters.kernel.config.ChannelConfig`), `load_keys(config, config_dir)` (reads and checks every
key and certificate file the config names) and `build(name, config, ctx) -> ChannelAdapter`;
and, in `simulator.py`, `build_app(settings) -> aiohttp.web.Application`.

`check_config` validates a channel's `config:` mapping as the routing file gives it and loads
its key files (they must exist and load), without building an adapter or touching an HTTP
session; `build_adapter` builds the adapter. Both raise `AdapterConfigError`, whose `errors` are
``field: problem`` messages (never key material), so that a routing file with one bad channel
is refused whole (API.md §4).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, cast

from aiohttp import web
from pydantic import ValidationError

from adapters.base import AdapterContext, ChannelAdapter
from adapters.kernel.config import ChannelConfig, ConfigFieldError
from adapters.simkit import SimulatorSettings

ADAPTERS: tuple[str, ...] = ("bank", "wechat", "alipay", "unionpay")


class _AdapterModule(Protocol):
    CONFIG_MODEL: type[ChannelConfig]

    def load_keys(self, config: Any, config_dir: str) -> object: ...

    def build(
        self, name: str, config: Mapping[str, Any], ctx: AdapterContext
    ) -> ChannelAdapter: ...


class _SimulatorModule(Protocol):
    def build_app(self, settings: SimulatorSettings) -> web.Application: ...


def _module(adapter: str, part: str) -> object:
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r}; known: {', '.join(ADAPTERS)}")
    return importlib.import_module(f"adapters.{adapter}.{part}")


class AdapterConfigError(ValueError):
    """A channel's `config:` that its adapter refuses: `errors` are ``field: problem``."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


def _validation_errors(exc: ValidationError) -> list[str]:
    found: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "(config)"
        message = error["msg"].removeprefix("Value error, ")
        line = f"{where}: {message}"
        if line not in found:
            found.append(line)
    return found


@contextmanager
def _config_errors() -> Iterator[None]:
    """Whatever refuses a config, as AdapterConfigError."""
    try:
        yield
    except AdapterConfigError:
        raise
    except ValidationError as exc:
        raise AdapterConfigError(_validation_errors(exc)) from None
    except ConfigFieldError as exc:
        raise AdapterConfigError([str(exc)]) from None
    except (OSError, ValueError, TypeError) as exc:
        if isinstance(exc.__cause__, ValidationError):
            # an adapter that wraps its validation error: the wrapper's text carries the
            # offending input values, which may be secrets
            raise AdapterConfigError(_validation_errors(exc.__cause__)) from None
        raise AdapterConfigError([f"(config): {exc}"]) from None


def build_adapter(
    adapter: str, name: str, config: Mapping[str, Any], ctx: AdapterContext
) -> ChannelAdapter:
    """Validate the config, load its keys and build the adapter. Raises AdapterConfigError."""
    module = cast(_AdapterModule, _module(adapter, "adapter"))
    with _config_errors():
        return module.build(name, config, ctx)


def check_config(adapter: str, config: Mapping[str, Any], config_dir: str) -> None:
    """Validate a channel's config and load its key files, building nothing and talking to
    nobody. Raises AdapterConfigError."""
    module = cast(_AdapterModule, _module(adapter, "adapter"))
    with _config_errors():
        module.load_keys(module.CONFIG_MODEL.model_validate(dict(config)), config_dir)


def build_simulator(adapter: str, settings: SimulatorSettings) -> web.Application:
    module = cast(_SimulatorModule, _module(adapter, "simulator"))
    return module.build_app(settings)


def available_simulators() -> list[str]:
    """The adapters whose package is present (so a partial checkout still mounts the rest)."""
    found = []
    for adapter in ADAPTERS:
        try:
            importlib.import_module(f"adapters.{adapter}.simulator")
        except ModuleNotFoundError:
            continue
        found.append(adapter)
    return found
