"""Finds a channel's adapter and simulator by adapter name (`bank`, `wechat`, ...).

Each channel package provides `adapter.build(name, config, ctx) -> ChannelAdapter` and
`simulator.build_app(settings) -> aiohttp.web.Application`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol, cast

from aiohttp import web

from adapters.base import AdapterContext, ChannelAdapter
from adapters.simkit import SimulatorSettings

ADAPTERS: tuple[str, ...] = ("bank", "wechat", "alipay", "unionpay")


class _AdapterModule(Protocol):
    def build(
        self, name: str, config: Mapping[str, Any], ctx: AdapterContext
    ) -> ChannelAdapter: ...


class _SimulatorModule(Protocol):
    def build_app(self, settings: SimulatorSettings) -> web.Application: ...


def _module(adapter: str, part: str) -> object:
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r}; known: {', '.join(ADAPTERS)}")
    return importlib.import_module(f"adapters.{adapter}.{part}")


def build_adapter(
    adapter: str, name: str, config: Mapping[str, Any], ctx: AdapterContext
) -> ChannelAdapter:
    module = cast(_AdapterModule, _module(adapter, "adapter"))
    return module.build(name, config, ctx)


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
