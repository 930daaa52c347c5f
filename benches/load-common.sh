# Sourced by benches/http-load.sh and benches/miss-load.sh: wrk, the release
# binary ($bin), a work directory ($work) and an operator token ($token);
# and write_rotate_lua, the Lua both drive wrk with.
if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk
fi
cargo build --release --locked --bin keyledger
bin="$PWD/target/release/keyledger"

work="$(mktemp -d)"
token="load-operator-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

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
