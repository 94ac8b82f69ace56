# shellcheck shell=bash
# shellcheck disable=SC2154 # the settings and helpers come from bench/run.sh, which sources this
# Scenario 6 of bench/run.sh, issue 21 ("Done means" 2): warm requests through a view cost no
# more than through the merged root. One proxy in front of the three fast mocks (magento,
# hyva, packagist) with one [[view]] over all three and require_tokens on; a token bound to the
# view and an organisation-wide one. wrk on a p2 file and the 100 KB archive, through
# `/<view>/…` with the bound token (the archive at the URL the view's metadata hands out)
# against the merged root with the organisation-wide token, taking turns each round (odd
# rounds the view first); medians over ROUNDS. The ratio (view ÷ merged) shows what the view's
# checks cost on the hot path: the binding, the view's ownership rule, its own ETag.
# BENCH_ONLY=views runs only this one.

readonly VIEW_NAME=acme

declare -A views_result views_cpu views_sizes views_paths
views_pid=""

# CPU time (user + system, in clock ticks) the proxy has used so far.
views_cpu_ticks() {
  awk '{ print $14 + $15 }' "/proc/$views_pid/stat"
}

# Creates token $2 with the extra `tokens create` arguments after it, for the proxy configured
# by $1; prints the secret.
views_token() {
  local config=$1 name=$2
  shift 2
  env -i PATH="$PATH" COMPOSER_PROXY_CACHE_DIR="$work/cache-views" \
    "$bin/composer-proxy" --config "$config" tokens create --name "$name" "$@" |
    awk '$1 ~ /^cpt_/ && NF == 1 { print $1; exit }'
}

# The proxy-relative dist path that repository $1 (the merged root or a view, absolute URL)
# hands out for package $2, asked with Authorization $3; relative to the proxy's base $4.
views_dist_path() {
  local url
  url=$(curl -fsS -H "Authorization: $3" "$1/p2/$2.json" |
    jq -er --arg p "$2" '.packages[$p][0].dist.url')
  echo "${url#"$4"}"
}

# Requests $1 with Authorization $2 until the proxy answers it from its cache (X-Cache: HIT);
# writes the body to $3.
views_warm() {
  local status
  for _ in 1 2 3 4 5; do
    status=$(curl -fsS -H "Authorization: $2" -o "$3" -D - "$1" |
      tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache" { print $2 }')
    [[ $status != HIT ]] || return 0
  done
  die "$1 is not served from the proxy's cache after 5 requests"
}

# Whether the proxy at $1 is ready with every upstream answering.
views_ready() {
  [[ $(curl -fsS "$1/readyz" |
    jq -r '.status == "ready" and ([.upstreams[].status] | all(. == "ok"))') == true ]]
}

run_views_scenario() {
  start_three_mocks views 0 --archive-bytes "$SMALL_ARCHIVE_BYTES"
  local config=$work/views-proxy.toml
  # Top-level settings precede the tables in TOML, so require_tokens goes in as a variable.
  cp "$work/views.toml" "$config"
  printf '\n[[view]]\nname = "%s"\nupstreams = ["magento", "hyva", "packagist"]\n' \
    "$VIEW_NAME" >>"$config"
  local bound org
  mkdir -p "$work/cache-views"
  bound=$(views_token "$config" bench-view --view "$VIEW_NAME")
  org=$(views_token "$config" bench-org)
  [[ $bound == cpt_* && $org == cpt_* ]] || die "tokens create printed no secret"
  launch_proxy proxy-views "$work/cache-views" COMPOSER_PROXY_REQUIRE_TOKENS=true \
    -- --config "$config"
  local base=$proxy_url
  views_pid=$proxy_pid
  wait_until views_ready "$base" || die "the views proxy was not ready: $(curl -sS "$base/readyz")"
  declare -A repo_of=([view]=$base/$VIEW_NAME [merged]=$base)
  declare -A auth_of=([view]="Bearer $bound" [merged]="Bearer $org")

  local side name
  for side in view merged; do
    views_paths[$side:p2-framework]=${repo_of[$side]#"$base"}/p2/magento/framework.json
    views_paths[$side:archive-100k]=$(views_dist_path "${repo_of[$side]}" \
      "bench/blob-$SMALL_ARCHIVE_BYTES" "${auth_of[$side]}" "$base")
  done
  for name in p2-framework archive-100k; do
    for side in view merged; do
      [[ ${views_paths[$side:$name]} == /* ]] ||
        die "no proxy path for $side $name: '${views_paths[$side:$name]}'"
      views_warm "$base${views_paths[$side:$name]}" "${auth_of[$side]}" "$work/views-$name-$side.bin"
    done
    views_sizes[$name]=$(stat -c %s "$work/views-$name-view.bin")
    log "warm: $name via the view ${views_paths[view:$name]}, merged ${views_paths[merged:$name]}"
  done
  # The same archive bytes either way (the p2 files differ: each names its own URLs).
  cmp -s "$work/views-archive-100k-view.bin" "$work/views-archive-100k-merged.bin" ||
    die "the view and the merged root serve different archive bytes"
  # The bound token really is refused on the merged root: the two sides are what they claim.
  [[ $(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $bound" \
    "$base/packages.json") == 403 ]] || die "the bound token is not refused on the merged root"

  # Odd rounds measure the view first, even rounds the merged root, so drift on a busy machine
  # does not favour one side.
  local round order
  for ((round = 1; round <= ROUNDS; round++)); do
    order="view merged"
    ((round % 2)) || order="merged view"
    for name in p2-framework archive-100k; do
      for side in $order; do
        log "round $round/$ROUNDS, wrk ${DURATION_SECS}s: $name via the $side"
        local before after requests
        before=$(views_cpu_ticks)
        # Read by summarise (bench/run.sh) through a nameref, which shellcheck cannot follow.
        # shellcheck disable=SC2034
        views_result[$name-$side-$round]=$(measure "views-$name-$side-$round" \
          "$base${views_paths[$side:$name]}" -H "Authorization: ${auth_of[$side]}")
        after=$(views_cpu_ticks)
        # The proxy's CPU per request, over the recorded run and measure's warm-up second,
        # whose requests wrk does not report: high by about 1/DURATION_SECS, for both alike.
        requests=$(awk '/ requests in / { print $1 }' "$work/wrk-views-$name-$side-$round.txt")
        views_cpu[$name-$side-$round]=$(awk -v t=$((after - before)) -v n="$requests" \
          -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
      done
    done
  done
}

report_views() {
  echo "### Views: warm requests through a view against the merged root"
  echo
  echo "One proxy, three upstreams, require_tokens on, [[view]] \`$VIEW_NAME\` over all three. The view side asks \`/$VIEW_NAME/…\` with a token bound to the view (the archive at the URL the view's metadata hands out); the merged side asks the root with an organisation-wide token. Both warm; wrk -c$CONNECTIONS -t$WRK_THREADS -d${DURATION_SECS}s, medians of $ROUNDS rounds, the two taking turns (odd rounds the view first). Target: the view's req/s at least the merged root's, within the noise band (BENCH_NOISE). CPU µs/req is the proxy's own CPU time (user + system) per request reported by wrk: what the view costs, less sensitive than req/s to other load on the machine (it includes measure's unrecorded warm-up second, so both are high by about 1/${DURATION_SECS}; the ratio is what counts)."
  echo
  echo "| object | bytes | view req/s | merged req/s | view ÷ merged | each round | view p99 ms | merged p99 ms | p99 view ÷ merged | view CPU µs/req | merged CPU µs/req | CPU view ÷ merged | errors | target | met |"
  echo "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
  local name side round errors all rps_ratio p99_ratio met
  for name in p2-framework archive-100k; do
    declare -A med_rps med_p99 med_cpu each
    local total_errors=0
    for side in view merged; do
      read -r "med_rps[$side]" "med_p99[$side]" errors all \
        <<<"$(summarise "$name" "$side" views_result)"
      each[$side]=${all//\// }
      total_errors=$((total_errors + errors))
      local all_cpu=()
      for ((round = 1; round <= ROUNDS; round++)); do
        all_cpu+=("${views_cpu[$name-$side-$round]}")
      done
      med_cpu[$side]=$(median "${all_cpu[@]}")
    done
    rps_ratio=$(ratio "${med_rps[view]}" "${med_rps[merged]}")
    p99_ratio=$(ratio "${med_p99[view]}" "${med_p99[merged]}")
    # "No more than": within the noise band of the run, as the merged scenario reads it.
    met=$(meets "$rps_ratio" '>=' "$(awk -v n="$NOISE" 'BEGIN { print 1 - n }')")
    # The backticks are markdown code spans, not command substitution.
    # shellcheck disable=SC2016
    printf '| %s `%s` | %s | %.0f | %.0f | %s | %s | %.2f | %.2f | %s | %s | %s | %s | %s | req/s ≥ %s× | %s |\n' \
      "$name" "${views_paths[view:$name]}" "${views_sizes[$name]}" "${med_rps[view]}" \
      "${med_rps[merged]}" "$rps_ratio" "$(pairwise_ratios "${each[view]}" "${each[merged]}")" \
      "${med_p99[view]}" "${med_p99[merged]}" "$p99_ratio" "${med_cpu[view]}" \
      "${med_cpu[merged]}" "$(ratio "${med_cpu[view]}" "${med_cpu[merged]}")" "$total_errors" \
      "$(awk -v n="$NOISE" 'BEGIN { print 1 - n }')" "$met"
  done
}

# The report of a BENCH_ONLY=views run.
report_views_only() {
  echo "## composer-proxy benchmark: views only"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), built from commit $build_commit, $(nproc) CPUs. 1-minute load average before: $load_before; at the end: $(cut -d' ' -f1 /proc/loadavg)."
  echo
  echo "Reproduce: \`BENCH_ONLY=views BENCH_ROUNDS=$ROUNDS BENCH_DURATION_SECS=$DURATION_SECS BENCH_CONNECTIONS=$CONNECTIONS BENCH_MODULES=$MODULES bench/run.sh\`"
  echo
  report_views
}
