"""Golden vectors: each channel's wire protocol pinned by material from outside this repository
(the channels' documentation, their official SDKs' test data, real signed messages they
published), checked against our adapters' public behaviour with independent code
(`cryptography` directly, the SDK packages installed in the venv, or the `openssl` command).
Nothing here imports a channel's `protocol` module. Sources: docs/channels/<channel>.md."""
