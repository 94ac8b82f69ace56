#!/usr/bin/env bash
# Memory given back after bursts (issue 23, "Done means" 2). The proxy's RSS idle, then for
# each burst (BENCH_RSS_CONNECTIONS clients at once, default 1000, for BENCH_RSS_SECS seconds,
# default 10, with wrk): its peak during the burst (VmHWM, reset before each burst) and its RSS
# BENCH_RSS_SETTLE_SECS (default 30) after the last connection closed. Two bursts: one cached
# 5 MB archive, then one small p2 file. The target: settled RSS within 2x idle or idle + 32 MB,
# whichever is larger, and the peak at most 256 MB.
#
# Builds the release binaries of composer-proxy and examples/mock_upstream; BENCH_RSS_FEATURES
# passes cargo features (for example `--no-default-features --features cloud-buckets` for the
# system allocator, to compare), BENCH_RSS_PROFILE=debug reuses debug builds. Loopback only,
# ports from the kernel, every wait bounded, every process started here stopped on exit.
# Needs: cargo, wrk, curl, jq, ss.

set -euo pipefail
export LC_ALL=C

readonly CONNECTIONS=${BENCH_RSS_CONNECTIONS:-1000}
readonly SECS=${BENCH_RSS_SECS:-10}
readonly SETTLE_SECS=${BENCH_RSS_SETTLE_SECS:-30}
readonly PROFILE=${BENCH_RSS_PROFILE:-release}
read -ra FEATURES <<<"${BENCH_RSS_FEATURES:-}"
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
cargo build "${flag[@]}" "${FEATURES[@]}" --bin composer-proxy --example mock_upstream >&2
target=${CARGO_TARGET_DIR:-target}/$PROFILE

"$target/examples/mock_upstream" --modules 2 --archive-bytes "$ARCHIVE_BYTES" \
  --url-file "$work/mock.url" --max-secs 900 >"$work/mock.log" 2>&1 &
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
p2=$url/p2/magento/framework.json
curl -fsS -o /dev/null "$p2"

status() { awk -v k="$1:" '$1 == k { print int($2 / 1024) }' "/proc/$proxy_pid/status"; }
established() { ss -Htn state established "( sport = :${url##*:} )" | wc -l; }
ulimit -n "$((CONNECTIONS + 1024))" 2>/dev/null || true
idle=$(status VmRSS)
bound=$((idle * 2 > idle + 32 ? idle * 2 : idle + 32))
echo "connections=$CONNECTIONS secs=$SECS settle=${SETTLE_SECS}s profile=$PROFILE features='${FEATURES[*]}'"
echo "idle RSS ${idle} MiB; settled RSS target <= ${bound} MiB, peak target <= 256 MiB"
echo
echo "| burst | req/s | transfer/s | errors | peak MiB | RSS at end MiB | RSS ${SETTLE_SECS} s later MiB | met |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for burst in archive-5m p2; do
  case $burst in
    archive-5m) target_url=$dist ;;
    p2) target_url=$p2 ;;
  esac
  # Peak RSS of this burst alone: 5 resets VmHWM to the current RSS.
  echo 5 >"/proc/$proxy_pid/clear_refs"
  wrk -c"$CONNECTIONS" -t2 -d"${SECS}s" --timeout 30s "$target_url" >"$work/wrk-$burst.txt"
  peak=$(status VmHWM)
  # The connections close with wrk; give the proxy a bounded moment to let them go.
  wait_until test "$(established)" -eq 0 || true
  at_end=$(status VmRSS)
  # The measurement itself: how much of the burst's memory is still held this long after.
  sleep "$SETTLE_SECS"
  settled=$(status VmRSS)
  met=yes
  ((settled <= bound && peak <= 256)) || met="**no**"
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$work/wrk-$burst.txt")
  transfer=$(awk '/^Transfer\/sec:/ { print $2 }' "$work/wrk-$burst.txt")
  errors=$(awk -F'[ ,]+' '/Socket errors:|Non-2xx/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i } END { print s + 0 }' "$work/wrk-$burst.txt")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$burst" "$rps" "$transfer" "$errors" \
    "$peak" "$at_end" "$settled" "$met"
done
echo
echo "Reproduce: \`BENCH_RSS_CONNECTIONS=$CONNECTIONS BENCH_RSS_SECS=$SECS BENCH_RSS_SETTLE_SECS=$SETTLE_SECS BENCH_RSS_FEATURES='${FEATURES[*]}' bench/rss.sh\`"
