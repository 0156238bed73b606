"""What the channels' `devkeys` scripts share: writing a DEVELOPMENT-ONLY RSA key pair, kept
unless `--force` is given (the protocol tests pin signatures made with the committed keys)."""

from __future__ import annotations

from pathlib import Path

from adapters.kernel.crypto import new_rsa_key, private_pem, public_pem


def write_rsa_pair(private_path: Path, public_path: Path, *, force: bool) -> None:
    """A new RSA-2048 key pair as PKCS#8 / SubjectPublicKeyInfo PEM files."""
    if private_path.exists() and not force:
        print(f"kept {private_path} (use --force to replace)")
        return
    key = new_rsa_key()
    private_path.write_bytes(private_pem(key))
    public_path.write_bytes(public_pem(key.public_key()))
    print(f"wrote {private_path} and {public_path}")
