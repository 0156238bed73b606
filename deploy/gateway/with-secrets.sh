#!/bin/sh
# The gateway container's entrypoint in deploy/compose.yaml: turns the secrets Compose mounts
# under /run/secrets/ into the environment the gateway reads, then runs `gateway "$@"`.
#
# - every file /run/secrets/env/NAME becomes the variable NAME (GATEWAY_MASTER_KEY,
#   GATEWAY_ADMIN_TOKEN, the channels' WECHAT_MAIN_APIV3_KEY, …), its trailing newline dropped;
# - GATEWAY_DATABASE_URL and GATEWAY_REDIS_URL, when not set, are built from the passwords in
#   /run/secrets/postgres_password and /run/secrets/redis_password (URL-safe characters only:
#   generate them with `openssl rand -hex 32`) and POSTGRES_HOST/PORT/USER/DB, REDIS_HOST/PORT.
#
# Secrets stay out of the image, of `docker inspect` and of the compose file; they live in
# this process's environment only.
set -eu
secrets=${SECRETS_DIR:-/run/secrets} # another directory in tests/deploy/test_compose.py only

for file in "$secrets"/env/*; do
  [ -f "$file" ] || continue
  name=$(basename "$file")
  value=$(cat "$file")
  export "$name=$value"
done

if [ -z "${GATEWAY_DATABASE_URL:-}" ]; then
  password=$(cat "$secrets/postgres_password")
  GATEWAY_DATABASE_URL="postgresql://${POSTGRES_USER:-gateway}:${password}@${POSTGRES_HOST:-postgres}:${POSTGRES_PORT:-5432}/${POSTGRES_DB:-gateway}"
  export GATEWAY_DATABASE_URL
fi
if [ -z "${GATEWAY_REDIS_URL:-}" ]; then
  password=$(cat "$secrets/redis_password")
  GATEWAY_REDIS_URL="redis://:${password}@${REDIS_HOST:-redis}:${REDIS_PORT:-6379}/0"
  export GATEWAY_REDIS_URL
fi
unset password value secrets

exec gateway "$@"
