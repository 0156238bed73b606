"""The adapter kernel: what every channel package shares.

- `adapters.kernel.calls`: one call to a channel (attempts, deadline, retries, and THE rule:
  a create or refund that may have acted is UNKNOWN, never failed over);
- `adapters.kernel.transport`: one HTTP attempt and the classification of its failures;
- `adapters.kernel.config`: the config model every adapter's extends, and key files;
- `adapters.kernel.crypto`: RSA-SHA256 signatures and key loading.

Beside it, `adapters.chinatime` (China time, once) and `adapters.devkeys` (writing development
key pairs).

A channel package keeps its wire format and results table (`protocol.py`), its adapter (builds
requests, hands one attempt to the kernel, maps answers) and its simulator.
"""
