#!/usr/bin/env bash
# Runs schemathesis against a fresh demo server, once per realm, with a token of that realm.
# See docs/SECURITY-TESTING.md. Usage: scripts/schemathesis.sh [max-examples] [port]
#
# Needs `schemathesis` on PATH (pip install schemathesis), curl and python3, and a built
# binary (cargo build -p streamflow); STREAMFLOW_BIN overrides where it is.
set -euo pipefail

EXAMPLES="${1:-30}"
PORT="${2:-18089}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${STREAMFLOW_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/streamflow}"
WORK="$(mktemp -d)"
BASE="http://127.0.0.1:$PORT"
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT

cd "$WORK"
STREAMFLOW_LISTEN="127.0.0.1:$PORT" \
STREAMFLOW_DATABASE_URL="sqlite://$WORK/sf.db" \
STREAMFLOW_DATA_DIR="$WORK/data" \
STREAMFLOW_LOGIN_PER_IP=1000000 STREAMFLOW_LOGIN_PER_ACCOUNT=1000000 \
STREAMFLOW_LOGIN_PER_ACCOUNT_GLOBAL=1000000 STREAMFLOW_UPLOADS_PER_HOUR=100000 \
  "$BIN" serve --demo >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 120); do
  curl -fsS "$BASE/health" >/dev/null 2>&1 && break
  sleep 1
done

token() { # path json
  curl -fsS -X POST "$BASE$1" -H 'content-type: application/json' -d "$2" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
PROVIDER=$(token /provider/auth/login '{"email":"provider@demo.streamflow.dev","password":"streamflow-demo"}')
# The demo has no developer account: the provider makes one.
curl -fsS -X POST "$BASE/provider/developers" -H "authorization: Bearer $PROVIDER" \
  -H 'content-type: application/json' \
  -d '{"email":"dev@demo.streamflow.dev","password":"streamflow-demo","name":"Demo Dev"}' >/dev/null
DEVELOPER=$(token /developer/auth/login '{"email":"dev@demo.streamflow.dev","password":"streamflow-demo"}')
CLIENT=$(token /api/auth/login '{"tenant":"acme-hvac","email":"owner@acme-hvac.demo","password":"streamflow-demo"}')

status=0
for realm in client developer provider; do
  case $realm in
    provider) TOKEN=$PROVIDER; PREFIX=/provider ;;
    developer) TOKEN=$DEVELOPER; PREFIX=/developer ;;
    client) TOKEN=$CLIENT; PREFIX=/api ;;
  esac
  echo "== $realm realm ($PREFIX)"
  # The logout routes would end the session the run uses; they are tested by the e2e suite.
  schemathesis run "$BASE/openapi.json" \
    -H "Authorization: Bearer $TOKEN" \
    --include-path-regex "^($PREFIX/|/health|/metrics)" \
    --exclude-path-regex '/auth/logout$' \
    --max-examples "$EXAMPLES" \
    --report junit --report-dir "$ROOT/target/schemathesis/$realm" \
    || status=$?
done
# Every response is logged with its status: count the server errors and panics.
echo "server errors logged: $(grep -Ec 'status=5[0-9]{2}' "$WORK/server.log" || true)"
echo "panics logged: $(grep -Ec 'panicked' "$WORK/server.log" || true)"
exit $status
