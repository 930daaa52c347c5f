#!/usr/bin/env bash
# Load benchmark of the HTTP service (not run in CI). One release server on
# a fresh data directory, driven by wrk on the same machine:
#
#   1. GET /healthz                                   (the HTTP stack's ceiling)
#   2. POST /v1/verify, valid keys, rotating through KEYS of them
#   3. POST /v1/keys, durable creates, writer keys in 4 tenants (group commit)
#   4. the baseline of 3: write + fdatasync of 200 B to a plain file in the
#      same directory, one at a time, for FSYNC_SECONDS
#
# each with CONNECTIONS connections for DURATION after a short warm-up.
# Prints requests per second and p99 of each, and verify / healthz.
# Targets (docs/performance.md): verify >= 0.8 x healthz, p99 < 5 ms at 64 connections;
# >= 20,000 acknowledged creates per second.
#
# Rounds alternate healthz and verify, so a noisy neighbour on a shared
# machine hits both alike; the ratio reported is the median of the rounds'
# ratios. wrk runs on the same 2 cores as the server, so both workloads are
# driven the same way, by a Lua `request()` handing out requests formatted
# up front: the client's cost per request is the same for both, and the
# ratio compares the server's work.
#
#   benches/http-load.sh                 # defaults below
#   DURATION=30s ROUNDS=5 KEYS=10000 benches/http-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-8s}"
ROUNDS="${ROUNDS:-5}"
FSYNC_SECONDS="${FSYNC_SECONDS:-3}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
KEYS="${KEYS:-1000}"

# wrk, the release binary, $work, $token, start_server, the Lua writers and run.
. benches/load-common.sh
start_server server

# Mint the keys to verify, and one writer key for the creates, through the
# operator route (keep-alive, so this takes a moment, not a minute).
python3 - "$base" "$token" "$KEYS" "$work" <<'PY'
import http.client, json, sys, urllib.parse
base, token, n, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
u = urllib.parse.urlparse(base)
c = http.client.HTTPConnection(u.hostname, u.port)
def mint(tenant, user, name, scopes=None):
    body = {"user": user, "name": name}
    if scopes:
        body["scopes"] = scopes
    c.request("POST", f"/v1/admin/tenants/{tenant}/keys", json.dumps(body),
              {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    assert r.status == 201, data
    return json.loads(data)["key"]
with open(f"{work}/keys.txt", "w") as f:
    for i in range(n):
        f.write(mint(f"tenant-{i % 10}", f"user-{i % 100}", f"key {i}") + "\n")
# Writers in 4 tenants: the creates of a run pass a tenant's
# 1,000,000-key limit (keyledger_core::limits::KEYS_PER_TENANT_MAX).
with open(f"{work}/writers.txt", "w") as f:
    for i in range(4):
        f.write(mint(f"load-{i}", "writer", "writer", ["keys:write"]) + "\n")
PY

# Healthz is driven the same way as the others (one request in the table).
write_rotate_lua
write_healthz_lua
write_verify_lua verify keys
cat >"$work/create.lua" <<LUA
local requests = {}
for line in io.lines("$work/writers.txt") do
  requests[#requests + 1] = wrk.format("POST", "/v1/keys",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. line },
    '{"name":"load test"}')
end
$(cat "$work/rotate.lua")
LUA
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "machine: $(nproc) cores, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg); keyledger $("$bin" --version | cut -d' ' -f2)"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION per round, $ROUNDS rounds alternating healthz and verify"
echo "(after a $WARMUP warm-up of each); $KEYS keys to verify, in 10 tenants"
run warmup "$work/healthz.lua" /healthz "$WARMUP" >/dev/null
run warmup "$work/verify.lua" /v1/verify "$WARMUP" >/dev/null
: >"$work/results"
for round in $(seq 1 "$ROUNDS"); do
  run healthz "$work/healthz.lua" /healthz "$DURATION" | tee -a "$work/results"
  run verify "$work/verify.lua" /v1/verify "$DURATION" | tee -a "$work/results"
done
# The baseline of a durable create: one write + fdatasync of 200 B at a
# time, to a plain file beside the data directory, right before the creates.
python3 - "$work" "$FSYNC_SECONDS" <<'PY' | tee -a "$work/results"
import os, sys, time
path, seconds = os.path.join(sys.argv[1], "fsync-baseline"), float(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
times, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    t = time.perf_counter()
    os.write(fd, b"x" * 200)
    os.fdatasync(fd)
    times.append(time.perf_counter() - t)
os.close(fd)
times.sort()
print("fsync rps=%.0f p50_ms=%.3f p99_ms=%.3f requests=%d errors=0" % (
    len(times) / sum(times), times[len(times) // 2] * 1e3, times[int(len(times) * 0.99)] * 1e3, len(times)))
PY
for round in $(seq 1 "$ROUNDS"); do
  run create "$work/create.lua" /v1/keys "$DURATION" | tee -a "$work/results"
done
echo "medians over $ROUNDS rounds:"
for name in healthz verify create; do
  rps="$(grep "^$name " "$work/results" | field rps | median)"
  p99="$(grep "^$name " "$work/results" | field p99_ms | median)"
  printf '  %-8s %8.0f req/s   p99 %6.2f ms\n' "$name" "$rps" "$p99"
done
python3 - "$work/results" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=([\d.]+)", l), name=l.split()[0]) for l in open(sys.argv[1])]
rps = lambda n: [float(r["rps"]) for r in rows if r["name"] == n]
ratios = [v / h for h, v in zip(rps("healthz"), rps("verify"))]
print("  verify / healthz, round by round: " + " ".join(f"{r:.2f}" for r in ratios))
print(f"  verify / healthz, median of the rounds: {statistics.median(ratios):.2f}")
fsync = [r for r in rows if r["name"] == "fsync"][0]
print(f"  baseline: write + fdatasync of 200 B, one at a time: {float(fsync['rps']):.0f}/s "
      f"(p50 {float(fsync['p50_ms']):.3f} ms, p99 {float(fsync['p99_ms']):.3f} ms)")
print(f"  durable creates per raw fdatasync's time: {statistics.median(rps('create')) / float(fsync['rps']):.1f}")
PY
echo "writer, over the whole run:"
curl -s -H "Authorization: Bearer $token" "$base/metrics" | grep -E '^keyledger_(commits_total|commands_committed_total|events_appended_total|commit_duration_seconds_(sum|count|bucket))[ {]' | sed 's/^/  /' || true
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if grep -q 'errors=[1-9]' "$work/results"; then
  echo "WARNING: some requests failed (errors= above): the figures of those rounds do not count" >&2
fi
