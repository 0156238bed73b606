"""What request handlers reach through the application: the services container
(`gateway.services.container.Services`), set up by `app.py`."""

from __future__ import annotations

from aiohttp import web

from gateway.services.container import Services

__all__ = ["SERVICES", "Services", "services"]

SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.config_dict[SERVICES]
