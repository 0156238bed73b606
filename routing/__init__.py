"""The routing engine: the operator's YAML rules (schema and loading, with hot reload), matching,
strategies, fees, channel health, and the pure decision of which channels a payment tries.

Imports nothing from `gateway` or `adapters` (the gateway injects its check of each channel's
adapter settings as a `routing.loader.ChannelCheck`); the only I/O is reading the routing file.
Entry points: `routing.loader.load_routing` / `RoutingHolder`, `routing.engine.route`,
`routing.explain.explain_text` / `check_text`; `routing.files` holds what the gateway's risk
file shares with it.
"""
