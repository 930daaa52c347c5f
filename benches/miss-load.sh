#!/usr/bin/env bash
# Load benchmark of misses on a follower (issue 17; not run in CI). Two
# release nodes on one PostgreSQL database, A and B, and wrk on the same
# machine against B, in one run:
#
#   1. GET /healthz on B                              (the HTTP stack's ceiling)
#   2. POST /v1/verify on B, well-formed keys no node has: a flood of
#      unknown keys, every request a miss (B reads the log's head, at most
#      once per miss interval, shared by the misses waiting)
#   3. POST /v1/verify on B, valid keys created on A, and GET /healthz on B,
#      each while a second wrk floods B with unknown keys (FLOOD_CONNECTIONS)
#
# Rounds alternate the workloads, so a noisy neighbour hits all alike; the
# ratios reported are medians of the rounds' ratios. Requests are formatted
# up front by the Lua of benches/load-common.sh, as in benches/http-load.sh,
# so the client costs the same per request whatever the workload. Also prints
# the head reads per second that the misses cost (from B's /metrics).
#
#   scripts/postgres run -- benches/miss-load.sh
#   DURATION=8s ROUNDS=5 MISS_INTERVAL_MS=1 scripts/postgres run -- benches/miss-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-64}"
FLOOD_CONNECTIONS="${FLOOD_CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
KEYS="${KEYS:-1000}"
MISS_INTERVAL_MS="${MISS_INTERVAL_MS:-1}"
url="${KEYLEDGER_TEST_POSTGRES_URL:?run under scripts/postgres run -- (or set KEYLEDGER_TEST_POSTGRES_URL)}"

# wrk, the release binary, $work, $token, start_server, the Lua writers and run.
. benches/load-common.sh
start() { # name -> $base, its URL
  KEYLEDGER_POSTGRES_URL="$url" start_server "$1" --node-id "$1" \
    --miss-interval-ms "$MISS_INTERVAL_MS"
}
start node-a
base_a="$base"
start node-b
base_b="$base"
[ -n "$base_a" ] && [ -n "$base_b" ] || { cat "$work"/*/stderr; exit 1; }

# Valid keys, created on A; unknown keys, made here as a node makes keys
# (same format and checksum) from material no node drew.
python3 - "$base_a" "$token" "$KEYS" "$work" <<'PY'
import http.client, json, os, sys, urllib.parse, zlib
base, token, n, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
u = urllib.parse.urlparse(base)
c = http.client.HTTPConnection(u.hostname, u.port)
with open(f"{work}/keys.txt", "w") as f:
    for i in range(n):
        body = {"user": f"user-{i % 100}", "name": f"key {i}"}
        c.request("POST", f"/v1/admin/tenants/tenant-{i % 10}/keys", json.dumps(body),
                  {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        assert r.status == 201, data
        f.write(json.loads(data)["key"] + "\n")
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
def base62(number, width):
    out = ""
    for _ in range(width):
        number, d = divmod(number, 62)
        out = ALPHABET[d] + out
    return out
with open(f"{work}/unknown.txt", "w") as f:
    for _ in range(n):
        s = "klk_" + base62(int.from_bytes(os.urandom(32), "big"), 43)
        f.write(s + base62(zlib.crc32(s.encode()), 6) + "\n")
PY

write_rotate_lua
write_healthz_lua
write_verify_lua verify-keys keys
write_verify_lua verify-unknown unknown

run() { # name script path duration -> "name rps=… p50_ms=… p99_ms=… requests=… errors=…"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$4" --timeout 10s -s "$2" "$base_b$3" | sed -n 's/^RESULT /'"$1"' /p'
}
# A flood of unknown keys on B for the length of one measured round.
flooded() { # name script path
  local secs="${DURATION%s}"
  wrk -t1 -c"$FLOOD_CONNECTIONS" -d"$((secs + 2))s" --timeout 10s -s "$work/verify-unknown.lua" \
    "$base_b/v1/verify" >/dev/null &
  local flood=$!
  sleep 1
  run "$1" "$2" "$3" "$DURATION"
  wait "$flood"
}
head_reads() {
  curl -s -H "Authorization: Bearer $token" "$base_b/metrics" |
    sed -n 's/^keyledger_miss_head_queries_total \([0-9]*\)$/\1/p'
}

echo "machine: $(nproc) cores, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg); keyledger $("$bin" --version | cut -d' ' -f2)"
echo "two nodes on one PostgreSQL database; wrk -t$THREADS -c$CONNECTIONS -d$DURATION against node B per round,"
echo "$ROUNDS rounds; miss interval $MISS_INTERVAL_MS ms; the flood beside rounds 3: wrk -t1 -c$FLOOD_CONNECTIONS of unknown keys"
run warmup "$work/healthz.lua" /healthz "$WARMUP" >/dev/null
run warmup "$work/verify-keys.lua" /v1/verify "$WARMUP" >/dev/null
run warmup "$work/verify-unknown.lua" /v1/verify "$WARMUP" >/dev/null
: >"$work/results"
for round in $(seq 1 "$ROUNDS"); do
  run healthz "$work/healthz.lua" /healthz "$DURATION" | tee -a "$work/results"
  before="$(head_reads)"
  start_ns="$(date +%s%N)"
  run unknown "$work/verify-unknown.lua" /v1/verify "$DURATION" | tee -a "$work/results"
  after="$(head_reads)"
  end_ns="$(date +%s%N)"
  echo "reads unknown_head_reads_per_s=$(( (after - before) * 1000000000 / (end_ns - start_ns) ))" | tee -a "$work/results"
  flooded healthz_flooded "$work/healthz.lua" /healthz | tee -a "$work/results"
  flooded valid_flooded "$work/verify-keys.lua" /v1/verify | tee -a "$work/results"
done
python3 - "$work/results" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=([\d.]+)", l), name=l.split()[0]) for l in open(sys.argv[1])]
def col(n, f="rps"):
    return [float(r[f]) for r in rows if r["name"] == n]
print("medians over the rounds:")
for n in ["healthz", "unknown", "healthz_flooded", "valid_flooded"]:
    print(f"  {n:16} {statistics.median(col(n)):8.0f} req/s   p50 {statistics.median(col(n, 'p50_ms')):6.2f} ms   p99 {statistics.median(col(n, 'p99_ms')):6.2f} ms")
for a, b, what in [("unknown", "healthz", "unknown-key verify (every request a miss) / healthz"),
                   ("valid_flooded", "healthz_flooded", "valid-key verify / healthz, both beside the flood")]:
    ratios = [x / y for x, y in zip(col(a), col(b))]
    print(f"  {what}: {statistics.median(ratios):.2f} (rounds: {' '.join(f'{r:.2f}' for r in ratios)})")
print(f"  head reads per second during the unknown-key rounds: {statistics.median(col('reads', 'unknown_head_reads_per_s')):.0f}")
PY
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if grep -q 'errors=[1-9]' "$work/results"; then
  echo "WARNING: some requests failed (errors= above): the figures of those rounds do not count" >&2
fi
