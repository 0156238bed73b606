#!/usr/bin/env python3
"""A minimal merchant client for the gateway: signs requests, creates a payment, prints the
payer URL and polls the payment until it is final.

Standard library only for HMAC-SHA256 keys; Ed25519 and RSA-SHA256 keys also need the
`cryptography` package (for the private key). Credentials come from the JSON that
`gateway merchant create --json` prints (--merchant-file FILE, or MERCHANT_FILE=FILE), or
from GATEWAY_KEY_ID with GATEWAY_SECRET (HMAC) or GATEWAY_KEY_TYPE + GATEWAY_PRIVATE_KEY (a PEM
file) in the environment.

    python examples/client.py --merchant-file var/demo-merchant.json --amount 1999
    python examples/client.py --merchant-file var/demo-merchant.json --pay   # simulators
    python examples/client.py --merchant-file var/demo-merchant.json --get pay_...

See examples/README.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_TYPES = ("hmac-sha256", "ed25519", "rsa-sha256")
FINAL = ("succeeded", "failed", "closed")


@dataclass(frozen=True)
class Credentials:
    key_id: str
    key_type: str  # one of KEY_TYPES
    secret: str | None = None  # HMAC: the string `merchant create` printed, used as UTF-8
    private_key_pem: bytes | None = None  # Ed25519 / RSA: the merchant's own private key

    @classmethod
    def load(cls, path: str | None, private_key: str | None) -> Credentials:
        path = path or os.environ.get("MERCHANT_FILE")
        if path:
            data = json.loads(Path(path).read_text())
            key_id, key_type, secret = data["key_id"], data.get("key_type"), data.get("secret")
        else:
            key_id = os.environ.get("GATEWAY_KEY_ID", "")
            key_type = os.environ.get("GATEWAY_KEY_TYPE")
            secret = os.environ.get("GATEWAY_SECRET")
            if not key_id:
                sys.exit("no credentials: pass --merchant-file FILE or set GATEWAY_KEY_ID")
        key_type = (key_type or "hmac-sha256").lower()
        if key_type not in KEY_TYPES:
            sys.exit(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")
        pem = None
        if key_type != "hmac-sha256":
            pem_path = private_key or os.environ.get("GATEWAY_PRIVATE_KEY")
            if not pem_path:
                sys.exit(f"a {key_type} key signs with your private key: pass --private-key PEM")
            pem = Path(pem_path).read_bytes()
        elif not secret:
            sys.exit("an hmac-sha256 key needs its secret (the JSON's `secret` or GATEWAY_SECRET)")
        return cls(key_id, key_type, secret, pem)

    def sign(self, message: bytes) -> bytes:
        if self.key_type == "hmac-sha256":
            assert self.secret is not None
            return hmac.new(self.secret.encode("utf-8"), message, hashlib.sha256).digest()
        # Only the asymmetric algorithms need a third-party package.
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

        assert self.private_key_pem is not None
        key = serialization.load_pem_private_key(self.private_key_pem, password=None)
        if self.key_type == "ed25519" and isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)  # pure Ed25519 over the message
        if self.key_type == "rsa-sha256" and isinstance(key, rsa.RSAPrivateKey):
            return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        sys.exit(f"the private key is not a {self.key_type} key")

    def authorization(self, method: str, path_and_query: str, body: bytes) -> str:
        """The Authorization header (API.md §1.1): a fresh timestamp and nonce every call."""
        timestamp = str(int(time.time()))
        nonce = secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-], used once
        message = f"{method}\n{path_and_query}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"
        signature = base64.b64encode(self.sign(message)).decode("ascii")
        return (
            f'GW1-{self.key_type.upper()} key_id="{self.key_id}",timestamp="{timestamp}",'
            f'nonce="{nonce}",signature="{signature}"'
        )


class ApiError(Exception):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('code')}: {problem.get('detail')}")
        self.status = status
        self.problem = problem


class Gateway:
    def __init__(self, base_url: str, credentials: Credentials, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        attempts: int = 3,
    ) -> dict[str, Any]:
        """Send a signed request; network errors and 5xx are retried with the same
        Idempotency-Key and body (a new signature each time), so a retry never pays twice."""
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        for attempt in range(1, attempts + 1):
            headers = {"Authorization": self.credentials.authorization(method, path, body)}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            if idempotency_key:
                headers["Idempotency-Key"] = idempotency_key
            req = urllib.request.Request(
                self.base_url + path,
                data=body if payload is not None else None,
                headers=headers,
                method=method,
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    result: dict[str, Any] = json.loads(resp.read())
                    return result
            except urllib.error.HTTPError as err:
                raw = err.read()
                try:
                    problem = json.loads(raw)
                except ValueError:
                    problem = {"detail": raw.decode(errors="replace")}
                if err.code < 500 or attempt == attempts:
                    raise ApiError(err.code, problem) from None
                retry_after = err.headers.get("Retry-After", "")
                delay = float(retry_after) if retry_after.isdigit() else 0.5 * 2**attempt
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                if attempt == attempts:
                    raise
                delay = 0.5 * 2**attempt
            time.sleep(min(delay, 10.0))
        raise AssertionError("unreachable")

    def create_payment(self, **fields: Any) -> dict[str, Any]:
        return self.request("POST", "/v1/payments", fields, idempotency_key=secrets.token_hex(16))

    def get_payment(self, payment_id: str) -> dict[str, Any]:
        return self.request("GET", "/v1/payments/" + urllib.parse.quote(payment_id, safe=""))


def act_as_payer(url: str, action: str = "pay") -> int:
    """Simulators only: press the payer page's button. Not signed: it plays the payer."""
    data = urllib.parse.urlencode({"action": action}).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    with urllib.request.urlopen(req, timeout=15) as resp:
        return int(resp.status)


def show(payment: dict[str, Any]) -> None:
    print(
        f"{payment['id']}  {payment['status']}  {payment['amount']} {payment['currency']}"
        f"  {payment['method']} via {payment.get('channel')}"
        + (f"  failure: {payment['failure']}" if payment.get("failure") else "")
    )


def poll(gw: Gateway, payment: dict[str, Any], wait: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    status = payment["status"]
    while status not in FINAL and time.monotonic() < deadline:
        time.sleep(2)
        payment = gw.get_payment(payment["id"])
        if payment["status"] != status:
            status = payment["status"]
            show(payment)
    if status not in FINAL:
        print(f"still {status} after {wait:.0f} s")
    return payment


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Create a payment as a merchant (signed requests), print the payer URL "
        "and poll the payment until it is final; or show one payment with --get."
    )
    p.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"))
    p.add_argument("--merchant-file", help="JSON printed by `gateway merchant create --json`")
    p.add_argument("--private-key", help="PEM private key (ed25519 / rsa-sha256 keys)")
    p.add_argument("--get", metavar="PAYMENT_ID", help="show this payment and exit")
    p.add_argument("--amount", type=int, default=1999, help="minor units (default 1999)")
    p.add_argument("--currency", default="CNY")
    p.add_argument("--method", default="card", help="card | wechat_qr | alipay_qr | unionpay_qr")
    p.add_argument("--order-id", default=None, help="merchant_order_id (default: random)")
    p.add_argument("--description", default="Example order")
    p.add_argument("--notify-url", default=None, help="where the gateway sends callbacks")
    p.add_argument("--wait", type=float, default=300, help="seconds to poll (0: do not poll)")
    p.add_argument("--pay", action="store_true", help="simulators only: act as the payer")
    args = p.parse_args(argv)

    gw = Gateway(args.url, Credentials.load(args.merchant_file, args.private_key))
    try:
        if args.get:
            print(json.dumps(gw.get_payment(args.get), indent=2))
            return 0
        fields: dict[str, Any] = {
            "merchant_order_id": args.order_id or "ex-" + secrets.token_hex(6),
            "amount": args.amount,
            "currency": args.currency,
            "method": args.method,
            "description": args.description,
        }
        if args.notify_url:
            fields["notify_url"] = args.notify_url
        payment = gw.create_payment(**fields)
        show(payment)
        action = payment.get("next_action") or {}
        if action.get("url"):
            print(f"payer URL ({action.get('type')}): {action['url']}")
            if args.pay:
                print(f"acting as the payer: HTTP {act_as_payer(action['url'])}")
            elif args.wait > 0:
                print("open it and pay (or run again with --pay); polling the payment...")
        if args.wait > 0:
            payment = poll(gw, payment, args.wait)
        return 0 if payment["status"] in ("pending", "succeeded") else 1
    except ApiError as err:
        print(f"error {err}", file=sys.stderr)
        print(json.dumps(err.problem, indent=2), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
