#!/usr/bin/env bash
# Peak and settled RSS of the proxy while BENCH_RSS_CONNECTIONS (default 1000) clients download
# one cached 5 MB archive at once (wrk, BENCH_RSS_SECS seconds, default 10), for issue 15's
# "1,000 concurrent 5 MB downloads stay under 256 MB RSS, and memory returns afterwards".
# Prints the proxy's VmRSS before, its VmHWM (peak) after the run, and its VmRSS once the
# connections are gone. A figure to report, not a pass/fail test.
#
# Uses the release builds of composer-proxy and examples/mock_upstream (built here; set
# BENCH_RSS_PROFILE=debug to reuse debug builds, whose buffers are the same size). Loopback
# only, ports from the kernel, every wait bounded, every process started here stopped on exit.
# Needs: cargo, wrk, curl, jq.

set -euo pipefail
export LC_ALL=C

readonly CONNECTIONS=${BENCH_RSS_CONNECTIONS:-1000}
readonly SECS=${BENCH_RSS_SECS:-10}
readonly PROFILE=${BENCH_RSS_PROFILE:-release}
readonly ARCHIVE_BYTES=$((5 * 1024 * 1024))

cd "$(dirname "$0")/.."
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_until() {
  local i
  for ((i = 0; i < 300; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

flag=()
[[ $PROFILE == debug ]] || flag=(--release)
cargo build "${flag[@]}" --bin composer-proxy --example mock_upstream >&2
target=${CARGO_TARGET_DIR:-target}/$PROFILE

"$target/examples/mock_upstream" --modules 2 --archive-bytes "$ARCHIVE_BYTES" \
  --url-file "$work/mock.url" --max-secs 600 >"$work/mock.log" 2>&1 &
pids+=($!)
wait_until test -s "$work/mock.url" || { echo "mock did not start" >&2; exit 1; }

# The mock's key pair (tests/integration/support/mock_upstream.rs).
COMPOSER_PROXY_LISTEN=127.0.0.1:0 COMPOSER_PROXY_UPSTREAM_URL=$(<"$work/mock.url") \
  COMPOSER_PROXY_PUBLIC_KEY=0123456789abcdef0123456789abcdef \
  COMPOSER_PROXY_PRIVATE_KEY=fedcba9876543210fedcba9876543210 \
  COMPOSER_PROXY_CACHE_DIR="$work/cache" COMPOSER_PROXY_LOG_FORMAT=json \
  COMPOSER_PROXY_LOG_LEVEL=info COMPOSER_PROXY_MAX_CONNECTIONS=$((CONNECTIONS + 64)) \
  "$target/composer-proxy" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
wait_until grep -q "\"public_url\"" "$work/proxy.log" || { echo "proxy did not start:" >&2; cat "$work/proxy.log" >&2; exit 1; }
url=$(grep -m1 '"public_url"' "$work/proxy.log" | jq -r .public_url)

package=bench/blob-$ARCHIVE_BYTES
dist=$(curl -fsS "$url/p2/$package.json" | jq -er --arg p "$package" '.packages[$p][0].dist.url')
curl -fsS -o /dev/null "$dist"

status() { awk -v k="$1:" '$1 == k { print int($2 / 1024) }' "/proc/$proxy_pid/status"; }
before=$(status VmRSS)
ulimit -n "$((CONNECTIONS + 1024))" 2>/dev/null || true
wrk -c"$CONNECTIONS" -t2 -d"${SECS}s" --timeout 30s "$dist" >"$work/wrk.txt"
peak=$(status VmHWM)
# The connections close with wrk; give the proxy a bounded moment to let them go.
wait_until test "$(ss -Htn state established "( sport = :${url##*:} )" | wc -l)" -eq 0 || true
after=$(status VmRSS)
echo "connections=$CONNECTIONS archive=5MiB profile=$PROFILE"
grep -E "Requests/sec|Transfer/sec|errors" "$work/wrk.txt" || true
echo "proxy RSS: before ${before} MiB, peak ${peak} MiB, after ${after} MiB"
