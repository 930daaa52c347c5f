#!/usr/bin/env bash
# Load benchmark of verification with key policy (issue 14; not run in CI).
# One release server on a fresh data directory, driven by wrk on the same
# machine, in rounds that alternate:
#
#   1. GET /healthz                          (the HTTP stack's ceiling, the baseline)
#   2. POST /v1/verify, KEYS keys each with credits (10^12, so a run never
#      exhausts them: reservations of 1,000 go through the log as in
#      production) and two rate limits too large to refuse
#   3. POST /v1/verify, KEYS plain keys     (for comparison)
#
# Prints requests per second and p99 of each, and the medians of the rounds'
# ratios policy / healthz (target >= 0.8, docs/performance.md) and
# policy / plain.
#
#   benches/policy-load.sh
#   DURATION=15s ROUNDS=5 KEYS=1000 benches/policy-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-8s}"
ROUNDS="${ROUNDS:-5}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
KEYS="${KEYS:-1000}"

. benches/load-common.sh
start_server server

python3 - "$base" "$token" "$KEYS" "$work" <<'PY'
import http.client, json, sys, urllib.parse
base, token, n, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
u = urllib.parse.urlparse(base)
c = http.client.HTTPConnection(u.hostname, u.port)
def mint(tenant, user, name, policy):
    body = {"user": user, "name": name, **policy}
    c.request("POST", f"/v1/admin/tenants/{tenant}/keys", json.dumps(body),
              {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    assert r.status == 201, data
    return json.loads(data)["key"]
policy = {
    "credits": {"remaining": 10**12},
    "limits": [
        {"name": "burst", "limit": 10**9, "duration": 1000},
        {"name": "daily", "limit": 10**9, "duration": 86400000},
    ],
}
with open(f"{work}/policy.txt", "w") as f:
    for i in range(n):
        f.write(mint(f"tenant-{i % 10}", f"user-{i % 100}", f"metered {i}", policy) + "\n")
with open(f"{work}/plain.txt", "w") as f:
    for i in range(n):
        f.write(mint(f"tenant-{i % 10}", f"user-{i % 100}", f"plain {i}", {}) + "\n")
PY

write_rotate_lua
write_healthz_lua
write_verify_lua policy policy
write_verify_lua plain plain

echo "machine: $(nproc) cores, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg); keyledger $("$bin" --version | cut -d' ' -f2)"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION per round, $ROUNDS rounds of healthz, policy, plain"
run warmup "$work/healthz.lua" /healthz "$WARMUP" >/dev/null
run warmup "$work/policy.lua" /v1/verify "$WARMUP" >/dev/null
run warmup "$work/plain.lua" /v1/verify "$WARMUP" >/dev/null
: >"$work/results"
for round in $(seq 1 "$ROUNDS"); do
  run healthz "$work/healthz.lua" /healthz "$DURATION" | tee -a "$work/results"
  run policy "$work/policy.lua" /v1/verify "$DURATION" | tee -a "$work/results"
  run plain "$work/plain.lua" /v1/verify "$DURATION" | tee -a "$work/results"
done
# One answer, to show what the policy keys' verifications return.
head -1 "$work/policy.txt" | python3 -c '
import http.client, json, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1]); c = http.client.HTTPConnection(u.hostname, u.port)
c.request("POST", "/v1/verify", json.dumps({"key": sys.stdin.read().strip()}), {"Content-Type": "application/json"})
print("  a policy key answers: " + c.getresponse().read().decode())' "$base"
python3 - "$work/results" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=([\d.]+)", l), name=l.split()[0]) for l in open(sys.argv[1])]
col = lambda n, f: [float(r[f]) for r in rows if r["name"] == n]
for n in ("healthz", "policy", "plain"):
    print(f"  {n:8} median {statistics.median(col(n, 'rps')):9.0f} req/s   p99 {statistics.median(col(n, 'p99_ms')):6.2f} ms")
for a, b in (("policy", "healthz"), ("plain", "healthz"), ("policy", "plain")):
    ratios = [x / y for x, y in zip(col(a, "rps"), col(b, "rps"))]
    print(f"  {a} / {b}, round by round: " + " ".join(f"{r:.2f}" for r in ratios)
          + f"; median {statistics.median(ratios):.2f}")
PY
echo "reservations over the run:"
curl -s -H "Authorization: Bearer $token" "$base/metrics" | grep -E '^keyledger_(commits_total|events_appended_total)[ {]' | sed 's/^/  /' || true
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if grep -q 'errors=[1-9]' "$work/results"; then
  echo "WARNING: some requests failed (errors= above): the figures of those rounds do not count" >&2
fi
