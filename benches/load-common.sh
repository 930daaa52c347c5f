# Sourced by the load benchmarks (benches/*-load.sh): wrk, the release
# binary ($bin), a work directory ($work) and an operator token ($token);
# start_server, which starts a server and waits for it (stopped, and $work
# deleted, on exit); write_rotate_lua and the Lua scripts they drive wrk
# with; and run, one wrk run.
if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk
fi
cargo build --release --locked --bin keyledger
bin="$PWD/target/release/keyledger"

work="$(mktemp -d)"
token="load-operator-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

# The processes to stop on exit: start_server's, and any a script adds.
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start_server NAME [SERVE OPTIONS...]: runs `keyledger serve` on a fresh
# data directory $work/NAME/data with the operator token, its output in
# $work/NAME/{stdout,stderr}, waits up to 60 s for its `listening on` line
# and sets $base to its URL (or prints its stderr and exits). Environment
# variables for it go before the call (`KEYLEDGER_POSTGRES_URL=... start_server`).
start_server() {
  local name="$1"
  shift
  mkdir -p "$work/$name"
  KEYLEDGER_OPERATOR_TOKEN="$token" KEYLEDGER_LOG="${KEYLEDGER_LOG:-warn}" \
    "$bin" --data "$work/$name/data" serve --addr 127.0.0.1:0 "$@" \
    >"$work/$name/stdout" 2>"$work/$name/stderr" &
  pids+=($!)
  for _ in $(seq 1 600); do
    grep -q '^listening on ' "$work/$name/stdout" && break
    sleep 0.1
  done
  base="$(sed -n 's/^listening on //p' "$work/$name/stdout")"
  [ -n "$base" ] || { cat "$work/$name/stderr"; exit 1; }
}

# Every request is formatted once, up front: wrk shares the 2 cores with
# the server, and formatting per request in Lua would cost it the most.
# A script fills `requests`, then appends $work/rotate.lua, which takes
# them in turn from a random start and prints one RESULT line at the end.
write_rotate_lua() {
  cat >"$work/rotate.lua" <<'LUA'
local i = math.random(#requests)
request = function()
  i = i % #requests + 1
  return requests[i]
end
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f requests=%d errors=%d\n",
    summary.requests / seconds, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, bad))
end
LUA
}

# write_healthz_lua: $work/healthz.lua, GET /healthz (write_rotate_lua first).
write_healthz_lua() {
  cat >"$work/healthz.lua" <<LUA
local requests = { wrk.format("GET", "/healthz") }
$(cat "$work/rotate.lua")
LUA
}

# write_verify_lua OUT IN: $work/OUT.lua, POST /v1/verify of each key
# listed one per line in $work/IN.txt, taken in turn (write_rotate_lua first).
write_verify_lua() {
  cat >"$work/$1.lua" <<LUA
local requests = {}
for line in io.lines("$work/$2.txt") do
  requests[#requests + 1] = wrk.format("POST", "/v1/verify",
    { ["Content-Type"] = "application/json" }, '{"key":"' .. line .. '"}')
end
$(cat "$work/rotate.lua")
LUA
}

# run NAME SCRIPT PATH DURATION: one wrk run against $base$PATH, printed as
# "NAME rps=… p50_ms=… p99_ms=… requests=… errors=…".
run() {
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$4" --timeout 10s -s "$2" "$base$3" | sed -n 's/^RESULT /'"$1"' /p'
}
