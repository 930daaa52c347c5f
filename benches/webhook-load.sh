#!/usr/bin/env bash
# Load benchmark (not run in CI): verification throughput while webhook
# deliveries go to a receiver that answers after 2 s.
#
# One release server; KEYS keys to verify in 10 tenants, each tenant
# subscribed (key.created, key.revoked) to one slow receiver
# (tests/webhook_receiver.py --delay 2, which also checks every signature);
# a background client creates and revokes keys in those tenants the whole
# time, so every subscription always has deliveries waiting on the slow
# receiver. Rounds alternate GET /healthz and POST /v1/verify (wrk, the
# same Lua driver as benches/http-load.sh); the ratio reported is the
# median of the rounds' verify / healthz. Target (issue 15): >= 0.8.
#
#   benches/webhook-load.sh
#   DURATION=8s ROUNDS=5 benches/webhook-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-5}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
KEYS="${KEYS:-1000}"
DELAY="${DELAY:-2}"

scripts/webhook-receiver-venv >/dev/null
python="$PWD/target/webhooks-venv/bin/python"
# wrk, the release binary, $work, $token, start_server, the Lua writers and run.
. benches/load-common.sh
"$python" tests/webhook_receiver.py --port-file "$work/rx-port" --secret-file "$work/rx-secret" \
  --out "$work/rx.jsonl" --delay "$DELAY" 2>"$work/rx-stderr" &
pids+=($!)
start_server server --webhook-timeout 30s
for _ in $(seq 1 600); do
  [ -s "$work/rx-port" ] && break
  sleep 0.1
done
rx_url="http://127.0.0.1:$(cat "$work/rx-port")/hook"

# Keys to verify, a webhooks:manage key per tenant, one subscription per
# tenant (the receiver is given every subscription's secret).
python3 - "$base" "$token" "$KEYS" "$work" "$rx_url" <<'PY'
import http.client, json, sys, urllib.parse
base, token, n, work, rx_url = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
u = urllib.parse.urlparse(base)
c = http.client.HTTPConnection(u.hostname, u.port)
def call(method, path, body, auth):
    c.request(method, path, json.dumps(body),
              {"Authorization": f"Bearer {auth}", "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    assert r.status in (200, 201), data
    return json.loads(data)
with open(f"{work}/keys.txt", "w") as f:
    for i in range(n):
        k = call("POST", f"/v1/admin/tenants/tenant-{i % 10}/keys",
                 {"user": f"user-{i % 100}", "name": f"key {i}"}, token)
        f.write(k["key"] + "\n")
managers = []
for t in range(10):
    m = call("POST", f"/v1/admin/tenants/tenant-{t}/keys",
             {"user": "ops", "name": "webhooks", "scopes": ["keys:write", "webhooks:manage"]}, token)
    managers.append(m["key"])
    s = call("POST", "/v1/webhooks", {"url": rx_url, "event_types": ["key.created", "key.revoked"]},
             m["key"])
    with open(f"{work}/rx-secret", "a") as f:
        f.write(s["secret"] + "\n")
open(f"{work}/managers.txt", "w").write("\n".join(managers) + "\n")
PY

# The background writer: a create and a revoke in each tenant in turn,
# as fast as one client goes, for the whole run.
python3 - "$base" "$work" <<'PY' &
import http.client, json, sys, urllib.parse
base, work = sys.argv[1], sys.argv[2]
u = urllib.parse.urlparse(base)
c = http.client.HTTPConnection(u.hostname, u.port)
managers = open(f"{work}/managers.txt").read().split()
i = 0
while True:
    m = managers[i % len(managers)]
    h = {"Authorization": f"Bearer {m}", "Content-Type": "application/json"}
    c.request("POST", "/v1/keys", json.dumps({"name": f"churn {i}"}), h)
    r = c.getresponse(); k = json.loads(r.read())
    c.request("POST", f"/v1/keys/{k['id']}/revoke", "", h)
    c.getresponse().read()
    i += 1
PY
pids+=($!)

write_rotate_lua
write_healthz_lua
write_verify_lua verify keys

echo "machine: $(nproc) cores, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION per round, $ROUNDS rounds alternating healthz and verify;"
echo "receiver answers after ${DELAY} s; a background client creates and revokes keys in the 10 subscribed tenants"
run warmup "$work/healthz.lua" /healthz "$WARMUP" >/dev/null
run warmup "$work/verify.lua" /v1/verify "$WARMUP" >/dev/null
: >"$work/results"
for round in $(seq 1 "$ROUNDS"); do
  run healthz "$work/healthz.lua" /healthz "$DURATION" | tee -a "$work/results"
  run verify "$work/verify.lua" /v1/verify "$DURATION" | tee -a "$work/results"
done
python3 - "$work/results" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=([\d.]+)", l), name=l.split()[0]) for l in open(sys.argv[1])]
rps = lambda n: [float(r["rps"]) for r in rows if r["name"] == n]
ratios = [v / h for h, v in zip(rps("healthz"), rps("verify"))]
print(f"  healthz median {statistics.median(rps('healthz')):.0f} req/s, verify median {statistics.median(rps('verify')):.0f} req/s")
print("  verify / healthz, round by round: " + " ".join(f"{r:.2f}" for r in ratios))
print(f"  verify / healthz, median of the rounds: {statistics.median(ratios):.2f}")
PY
echo "webhooks, over the run:"
curl -s -H "Authorization: Bearer $token" "$base/metrics" \
  | grep -E '^keyledger_(webhook_attempts_total|webhook_attempt_duration_seconds_(sum|count)|events_appended_total)' | sed 's/^/  /' || true
echo "  requests the receiver got: $(wc -l <"$work/rx.jsonl")"
if grep -q 'errors=[1-9]' "$work/results"; then
  echo "WARNING: some requests failed (errors= above): the figures of those rounds do not count" >&2
fi
