#!/usr/bin/env bash
# Cross-check of the lead-create benchmark with wrk (Debian package `wrk`), a lighter load
# generator than the Rust client of `cargo bench --bench http_load`.
#
#   scripts/bench-wrk.sh                                   # SQLite in a temporary folder
#   scripts/bench-wrk.sh postgres://postgres@127.0.0.1:5432/sf_wrk   # an EMPTY database
#   STREAMFLOW_WRITE_BATCH=1 scripts/bench-wrk.sh          # baseline: one transaction per create
#
# It builds the release binary, starts it on 127.0.0.1:18181, creates a tenant and an owner,
# warms up for 3 s, then runs 64 connections for 10 s (WRK_SECONDS).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
cargo build --release --locked -p streamflow >&2
work=$(mktemp -d)
trap 'kill $(cat "$work/pid") 2>/dev/null || true; rm -rf "$work"' EXIT
base=http://127.0.0.1:18181
(
  cd "$work"
  STREAMFLOW_DATABASE_URL="${1:-sqlite://$work/wrk.db}" STREAMFLOW_LISTEN=127.0.0.1:18181 \
  STREAMFLOW_PROVIDER_EMAIL=wrk@provider.test STREAMFLOW_PROVIDER_PASSWORD=wrk-password-1 \
  STREAMFLOW_LOG=warn exec "$OLDPWD/target/release/streamflow" serve >"$work/out" 2>&1 &
  echo $! >"$work/pid"
)
for _ in $(seq 50); do curl -sf "$base/health" >/dev/null && break; sleep 0.2; done
token() { python3 -c 'import sys, json; print(json.load(sys.stdin)["access_token"])'; }
json() { curl -sf "$base$1" -H 'content-type: application/json' ${3:+-H "authorization: Bearer $3"} -d "$2"; }
provider=$(json /provider/auth/login '{"email":"wrk@provider.test","password":"wrk-password-1"}' | token)
json /provider/tenants '{"slug":"wrk","name":"wrk"}' "$provider" >/dev/null
json /provider/tenants/wrk/users '{"email":"owner@wrk.test","password":"wrk-password-1","role":"owner"}' "$provider" >/dev/null
client=$(json /api/auth/login '{"tenant":"wrk","email":"owner@wrk.test","password":"wrk-password-1"}' | token)
cat >"$work/create.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"stage":"new","data":{"name":"Lead","email":"lead@example.com","phone":"+1 512 555 0100","source":"google_ads","service":"ac_replacement","budget":9500,"postal_code":"78704","notes":"Wants a quote for a 3-ton heat pump before summer."}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $client"
LUA
wrk -t1 -c64 -d3s -s "$work/create.lua" "$base/api/records/lead" >/dev/null
wrk -t1 -c64 -d"${WRK_SECONDS:-10}"s --latency -s "$work/create.lua" "$base/api/records/lead"
