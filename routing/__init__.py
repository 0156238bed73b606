"""The routing engine: the operator's YAML rules (schema and loading, with hot reload), matching,
strategies, fees, channel health, and the pure decision of which channels a payment tries.

Imports nothing from `gateway` or `adapters`; the only I/O is reading the routing file.
Entry points: `routing.loader.load_routing` / `RoutingHolder`, `routing.engine.route`,
`routing.explain.explain_text` / `check_text`.
"""
