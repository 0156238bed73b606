#!/usr/bin/env bash
# A signed request to the gateway with curl, openssl and base64 (API.md §1.1, HMAC-SHA256).
#
#   examples/curl.sh                                  create a 19.99 CNY card payment
#   examples/curl.sh GET /v1/payments/pay_...         any signed request
#   examples/curl.sh POST /v1/payments/pay_.../close '{}'
#
# Credentials: KEY_ID and SECRET in the environment, or MERCHANT_FILE=FILE naming the JSON that
# `gateway merchant create --json` printed (read with python3). GATEWAY_URL defaults to
# http://127.0.0.1:8080. Note: openssl takes the secret on its command line, where other users
# of this machine can see it in the process list; fine for a local demo, not for production.
# IDEMPOTENCY_KEY=... sets the Idempotency-Key of a POST (by default the nonce).
set -euo pipefail

GATEWAY_URL=${GATEWAY_URL:-http://127.0.0.1:8080}
if [ -n "${MERCHANT_FILE:-}" ]; then
  KEY_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key_id"])' "$MERCHANT_FILE")
  SECRET=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret"])' "$MERCHANT_FILE")
fi
: "${KEY_ID:?set KEY_ID and SECRET, or MERCHANT_FILE=merchant.json}"
: "${SECRET:?set KEY_ID and SECRET, or MERCHANT_FILE=merchant.json}"

METHOD=${1:-POST}
REQUEST_PATH=${2:-/v1/payments}   # path and query, exactly as sent
if [ $# -ge 3 ]; then
  BODY=$3
elif [ "$METHOD" = POST ] && [ "$REQUEST_PATH" = /v1/payments ]; then
  BODY='{"merchant_order_id":"curl-'$(date +%s)'","amount":1999,"currency":"CNY","method":"card","description":"Order from curl"}'
else
  BODY=''   # GET: the body line of the signed message is empty
fi

TIMESTAMP=$(date +%s)
NONCE=$(openssl rand -hex 16)   # 32 characters of [0-9a-f]: never reuse one

# The signed message: five lines, each ending in \n. The body goes in byte for byte.
SIGNATURE=$(printf '%s\n%s\n%s\n%s\n%s\n' "$METHOD" "$REQUEST_PATH" "$TIMESTAMP" "$NONCE" "$BODY" \
  | openssl dgst -sha256 -hmac "$SECRET" -binary | base64 | tr -d '\n')

AUTHORIZATION="GW1-HMAC-SHA256 key_id=\"$KEY_ID\",timestamp=\"$TIMESTAMP\",nonce=\"$NONCE\",signature=\"$SIGNATURE\""

args=(--silent --show-error --include -X "$METHOD" -H "Authorization: $AUTHORIZATION")
if [ -n "$BODY" ]; then
  # --data-binary sends the bytes unchanged (-d would strip newlines).
  args+=(-H "Content-Type: application/json" -H "Idempotency-Key: ${IDEMPOTENCY_KEY:-$NONCE}" --data-binary "$BODY")
fi
curl "${args[@]}" "$GATEWAY_URL$REQUEST_PATH"
echo
