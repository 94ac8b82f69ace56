# shellcheck shell=bash
# shellcheck disable=SC2154 # the settings and helpers come from bench/run.sh, which sources this
# Scenario 7 of bench/run.sh, issue 21 ("Done means" 2): what the usage record costs. Warm
# archive throughput (the 100 KB archive, wrk) of a proxy keeping the record (the default,
# usage_retention_days = 90) against one with it off (usage_retention_days = 0), both in
# front of the same fast mock and both warm, taking turns each round; medians over ROUNDS.
# Every archive answered is a line in the record, so this is the record at its busiest; the
# target is a cost of at most 5 % (on ÷ off ≥ 0.95). The lines written and the downloads the
# record dropped (composer_proxy_usage_dropped_total) are reported beside it: a record that
# kept up has a line per request and drops none.
# BENCH_ONLY=usage runs only this one.

declare -A usage_result
usage_bytes=""
usage_lines=""
usage_dropped=""

# The 200 responses wrk counted for the measurement $1 (its warm-up run is not kept).
usage_requests_of() {
  awk '/requests in/ { print $1 }' "$work/wrk-$1.txt"
}

run_usage_scenario() {
  start_mock usage-mock --archive-bytes "$SMALL_ARCHIVE_BYTES"
  local upstream=$mock_url
  launch_proxy proxy-usage-on "$work/cache-usage-on" \
    COMPOSER_PROXY_UPSTREAM_URL="$upstream" \
    COMPOSER_PROXY_PUBLIC_KEY="$PUBLIC_KEY" \
    COMPOSER_PROXY_PRIVATE_KEY="$PRIVATE_KEY"
  local on_url=$proxy_url
  launch_proxy proxy-usage-off "$work/cache-usage-off" \
    COMPOSER_PROXY_UPSTREAM_URL="$upstream" \
    COMPOSER_PROXY_PUBLIC_KEY="$PUBLIC_KEY" \
    COMPOSER_PROXY_PRIVATE_KEY="$PRIVATE_KEY" \
    COMPOSER_PROXY_USAGE_RETENTION_DAYS=0
  local off_url=$proxy_url
  declare -A url_of=([on]=$on_url [off]=$off_url)

  local path server round
  path=$(bucket_dist_path "$on_url" "bench/blob-$SMALL_ARCHIVE_BYTES")
  [[ $path == /* ]] || die "no proxy path for the 100 KB archive: '$path'"
  for server in on off; do
    warm_object "${url_of[$server]}$path" "$work/usage-archive-$server.bin"
  done
  cmp -s "$work/usage-archive-on.bin" "$work/usage-archive-off.bin" ||
    die "the two proxies serve different bytes for $path"
  usage_bytes=$(stat -c %s "$work/usage-archive-on.bin")

  for ((round = 1; round <= ROUNDS; round++)); do
    for server in on off; do
      log "round $round/$ROUNDS, wrk ${DURATION_SECS}s: the 100 KB archive, usage record $server"
      # Read by summarise (bench/run.sh) through a nameref, which shellcheck cannot follow.
      # shellcheck disable=SC2034
      usage_result[archive-100k-$server-$round]=$(measure "usage-$server-$round" "${url_of[$server]}$path")
    done
  done

  # The record is written within a second or two: wait (bounded) until it has a line per
  # response of the warm-ups and measurements, or give up and report what it has.
  local expected
  expected=$(usage_expected)
  wait_until usage_caught_up "$expected" || log "the record has fewer lines than responses"
  usage_lines=$(usage_line_count)
  usage_dropped=$(curl -fsS "$on_url/metrics" |
    awk '$1 == "composer_proxy_usage_dropped_total" { print $2 }')
  [[ -z $(find "$work/cache-usage-off" -name '*.jsonl' -print -quit) ]] ||
    die "the proxy with usage_retention_days = 0 wrote a usage record"
}

# Responses the proxy with the record served in the measured runs (warm-ups not counted).
usage_expected() {
  local round total=0
  for ((round = 1; round <= ROUNDS; round++)); do
    total=$((total + $(usage_requests_of "usage-on-$round")))
  done
  echo "$total"
}

usage_line_count() {
  find "$work/cache-usage-on/usage" -name '*.jsonl' -exec cat {} + 2>/dev/null | wc -l
}

# Whether the record holds at least $1 lines (it also has the warm-ups' and warm_object's).
usage_caught_up() {
  (($(usage_line_count) >= $1))
}

report_usage() {
  echo "### Usage record: warm archive throughput with the record on against off"
  echo
  echo "Proxy A keeps the usage record (usage_retention_days = 90, the default); proxy B has it off (0). Both warm, the 100 KB archive; wrk -c$CONNECTIONS -t$WRK_THREADS -d${DURATION_SECS}s, medians of $ROUNDS rounds, the two taking turns. Target: A ÷ B ≥ 0.95 (the record costs at most 5 %)."
  echo
  echo "| archive | bytes | A (on) req/s | B (off) req/s | A ÷ B | each round | A p99 ms | B p99 ms | errors | met |"
  echo "|---|---:|---:|---:|---:|---|---:|---:|---:|---|"
  local server errors all total_errors=0
  declare -A med_rps med_p99 each
  for server in on off; do
    read -r "med_rps[$server]" "med_p99[$server]" errors all \
      <<<"$(summarise archive-100k "$server" usage_result)"
    each[$server]=${all//\// }
    total_errors=$((total_errors + errors))
  done
  local r
  r=$(ratio "${med_rps[on]}" "${med_rps[off]}")
  echo "| archive-100k | $usage_bytes | ${med_rps[on]} | ${med_rps[off]} | $r | $(pairwise_ratios "${each[on]}" "${each[off]}") | ${med_p99[on]} | ${med_p99[off]} | $total_errors | $(meets "$r" '>=' 0.95) |"
  echo
  echo "Lines in A's record: $usage_lines for $(usage_expected) measured responses (plus the warm-up runs'); dropped (composer_proxy_usage_dropped_total): ${usage_dropped:-unknown}."
}

# The report of a BENCH_ONLY=usage run.
report_usage_only() {
  echo "## composer-proxy benchmark: the usage record only"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), built from commit $build_commit, $(nproc) CPUs. 1-minute load average before: $load_before; at the end: $(cut -d' ' -f1 /proc/loadavg)."
  echo
  echo "Reproduce: \`BENCH_ONLY=usage BENCH_ROUNDS=$ROUNDS BENCH_DURATION_SECS=$DURATION_SECS bench/run.sh\`"
  echo
  report_usage
}
