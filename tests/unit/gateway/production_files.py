"""Routing files for the production-safety tests (test_production.py here, and
tests/integration/test_production_serve.py): one bank channel on the key files given, and a
bank key pair that is not a development one."""

from __future__ import annotations

from pathlib import Path

import yaml

from adapters.kernel.crypto import new_rsa_key, private_pem, public_pem


def bank_routing(
    path: Path, private_key: str, public_key: str, base_url: str = "https://bank.example"
) -> Path:
    """A routing file with one bank channel on the given key files."""
    data = {
        "channels": {
            "bank_main": {
                "adapter": "bank",
                "methods": ["card"],
                "config": {
                    "base_url": base_url,
                    "merchant_id": "M100200300",
                    "merchant_private_key": private_key,
                    "bank_public_key": public_key,
                },
            }
        },
        "default": {"route": {"channels": ["bank_main"]}},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def real_bank_keys(folder: Path) -> tuple[str, str]:
    """A bank key pair that is not a development one, written under `folder`: (private,
    public) file paths."""
    own, bank = new_rsa_key(), new_rsa_key()
    (folder / "merchant_private.pem").write_bytes(private_pem(own))
    (folder / "bank_public.pem").write_bytes(public_pem(bank.public_key()))
    return str(folder / "merchant_private.pem"), str(folder / "bank_public.pem")
