#!/usr/bin/env bash
# Load benchmark of the global tree's C2SP tiles (not run in CI). One release
# server with --tiles-public on a fresh data directory holding EVENTS events,
# driven by wrk on the same machine, rounds alternating:
#
#   1. GET /healthz                              (the HTTP stack's ceiling)
#   2. GET /log/tile/0/<N>, full level-0 tiles   (8,192 bytes each), rotating
#   3. GET /log/tile/entries/<N>, full bundles   (8,704 bytes each), rotating
#   4. GET /log/checkpoint                       (the signed note)
#
# Prints requests per second and p99 of each and each one's ratio to
# healthz, round by round and the median (docs/performance.md, "Tiles").
#
#   benches/tiles-load.sh
#   DURATION=10s ROUNDS=5 EVENTS=20000 benches/tiles-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
EVENTS="${EVENTS:-10000}"

# wrk, the release binary, $work, $token, start_server, the Lua writers and run.
. benches/load-common.sh
start_server server --tiles-public

# EVENTS events in 10 tenants, through the operator route (keep-alive).
python3 - "$base" "$token" "$EVENTS" <<'PY'
import http.client, json, sys, urllib.parse
base, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlparse(base)
c = http.client.HTTPConnection(u.hostname, u.port)
for i in range(n):
    c.request("POST", f"/v1/admin/tenants/tenant-{i % 10}/keys",
              json.dumps({"user": f"user-{i % 100}", "name": f"key {i}"}),
              {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 201, r.read()
    r.read()
PY
size="$(curl -s "$base/log/checkpoint" | sed -n 2p)"
full=$((size / 256))
[ "$full" -ge 1 ] || { echo "no full tile: $size events"; exit 1; }

write_rotate_lua
tiles_lua() { # kind -> a Lua table of every full tile's path of that kind
  echo "local requests = {}"
  echo "for n = 0, $((full - 1)) do"
  echo "  local p = string.format(\"%03d\", n % 1000)"
  echo "  if n >= 1000 then p = string.format(\"x%03d/\", math.floor(n / 1000)) .. p end"
  echo "  requests[#requests + 1] = wrk.format(\"GET\", \"/log/tile/$1/\" .. p)"
  echo "end"
  cat "$work/rotate.lua"
}
tiles_lua 0 >"$work/tiles.lua"
tiles_lua entries >"$work/entries.lua"
for p in healthz log/checkpoint; do
  name="${p##*/}"
  { echo "local requests = { wrk.format(\"GET\", \"/$p\") }"; cat "$work/rotate.lua"; } >"$work/$name.lua"
done

run() { # name script duration -> "name rps=… p50_ms=… p99_ms=… requests=… errors=…"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$3" --timeout 10s -s "$2" "$base" | sed -n 's/^RESULT /'"$1"' /p'
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "machine: $(nproc) cores, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg); keyledger $("$bin" --version | cut -d' ' -f2)"
echo "global tree of $size events ($full full level-0 tiles); wrk -t$THREADS -c$CONNECTIONS -d$DURATION per round,"
echo "$ROUNDS rounds alternating healthz, tiles, entries, checkpoint (after a $WARMUP warm-up of each)"
for name in healthz tiles entries checkpoint; do
  run warmup "$work/$name.lua" "$WARMUP" >/dev/null
done
: >"$work/results"
for round in $(seq 1 "$ROUNDS"); do
  for name in healthz tiles entries checkpoint; do
    run "$name" "$work/$name.lua" "$DURATION" | tee -a "$work/results"
  done
done
echo "medians over $ROUNDS rounds:"
for name in healthz tiles entries checkpoint; do
  rps="$(grep "^$name " "$work/results" | field rps | median)"
  p99="$(grep "^$name " "$work/results" | field p99_ms | median)"
  printf '  %-10s %8.0f req/s   p99 %6.2f ms\n' "$name" "$rps" "$p99"
done
python3 - "$work/results" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=([\d.]+)", l), name=l.split()[0]) for l in open(sys.argv[1])]
rps = lambda n: [float(r["rps"]) for r in rows if r["name"] == n]
for name in ("tiles", "entries", "checkpoint"):
    ratios = [v / h for h, v in zip(rps("healthz"), rps(name))]
    print(f"  {name} / healthz, round by round: " + " ".join(f"{r:.2f}" for r in ratios)
          + f"; median {statistics.median(ratios):.2f}")
PY
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if grep -q 'errors=[1-9]' "$work/results"; then
  echo "WARNING: some requests failed (errors= above): the figures of those rounds do not count" >&2
fi
