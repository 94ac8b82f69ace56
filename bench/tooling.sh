# shellcheck shell=bash
# shellcheck disable=SC2154 # the settings and helpers come from bench/run.sh, which sources this
# Scenario 4 of bench/run.sh, issue 12 ("packagist.org through the proxy", Done means 3): a
# dev-tooling install (phpunit/phpunit 11.5 and its 26 dependencies, require-dev) from a
# packagist-like upstream whose dists are GitHub API zipball URLs, every request delayed by
# TOOLING_DELAY_MS (the packagist mock, its codeload host and the GitHub API mock). Composer
# going direct (the API redirects each zipball to codeload, two delayed requests a dist)
# against a cold proxy (fresh cache; with no github_token it fetches codeload directly) and
# the same proxy warm (its cache filled by the cold install). Fresh project, vendor directory
# and Composer cache for every install; medians over ROUNDS.
#
# Each round starts its own mocks: the GitHub API mock, like the real API's hour, allows an
# address without a token 60 requests, and a direct install makes 27.

readonly TOOLING_PACKAGE=phpunit/phpunit
readonly TOOLING_CONSTRAINT=^11.5
# Installed packages checked after every install: the root requirement and one from each
# level below it.
readonly TOOLING_CHECK=(phpunit/phpunit phpunit/php-code-coverage nikic/php-parser
  sebastian/recursion-context)

# Writes a project requiring TOOLING_PACKAGE (require-dev, as test tooling is) from the one
# repository $2 into $1, with its own COMPOSER_HOME and an empty cache; no credentials.
make_tooling_project() {
  local dir=$1 repo=$2
  mkdir -p "$dir/project" "$dir/home" "$dir/cache" "$dir/user"
  jq -n --arg url "$repo" --arg package "$TOOLING_PACKAGE" --arg constraint "$TOOLING_CONSTRAINT" '{
    name: "composer-proxy/bench-tooling-project",
    type: "project",
    license: "proprietary",
    repositories: [{type: "composer", url: $url}, {"packagist.org": false}],
    "require-dev": {($package): $constraint},
    "minimum-stability": "stable",
    config: {"secure-http": false, "allow-plugins": false, "platform-check": false}
  }' >"$dir/project/composer.json"
}

declare -A tooling_secs tooling_cpu_secs tooling_requests
# Per round: the seconds the warm proxy spent on the warm install's requests.
declare -A tooling_warm_proxy_secs
tooling_proxy_rss_kib=0

# Seconds the proxy spent on the requests it logged after line $2 of its log $1: the sum of
# their durations.
proxy_request_secs() {
  tail -n +"$(($2 + 1))" "$1" |
    jq -R 'fromjson? | select(.message == "request") | .duration_ms' |
    awk '{ ms += $1 } END { printf "%.2f", ms / 1000 }'
}

# One install of kind $1 (direct, cold or warm) in round $2, against the mocks named
# tooling-$2; cold starts the round's proxy, which warm then reuses.
run_tooling() {
  local kind=$1 round=$2 dir=$work/tooling-$1-$2 before after log_lines=0
  local proxy_log=$work/proxy-tooling-$2.log
  case $kind in
    direct) make_tooling_project "$dir" "$tooling_url" ;;
    cold)
      start_merged_proxy "proxy-tooling-$round" "$work/tooling-$round.toml" \
        "$work/cache-tooling-$round"
      tooling_pid=$proxy_pid
      tooling_proxy_url=$proxy_url
      make_tooling_project "$dir" "$tooling_proxy_url"
      ;;
    warm) make_tooling_project "$dir" "$tooling_proxy_url" ;;
  esac
  [[ $kind != warm ]] || log_lines=$(wc -l <"$proxy_log")
  before=$(upstream_requests "tooling-$round")
  log "round $round/$ROUNDS: dev-tooling composer install, $kind"
  tooling_secs[$kind-$round]=$(timed_install "$dir" "${TOOLING_CHECK[@]}")
  after=$(upstream_requests "tooling-$round")
  tooling_cpu_secs[$kind-$round]=$(<"$dir/composer-cpu-secs")
  local note=""
  if [[ $kind == warm ]]; then
    tooling_warm_proxy_secs[$round]=$(proxy_request_secs "$proxy_log" "$log_lines")
    note=", in the proxy ${tooling_warm_proxy_secs[$round]}s"
  fi
  tooling_requests[$kind-$round]=$((after - before))
  log "$kind: ${tooling_secs[$kind-$round]}s (Composer CPU ${tooling_cpu_secs[$kind-$round]}s$note), ${tooling_requests[$kind-$round]} upstream requests"
}

# All rounds of the scenario; odd rounds run direct first, even rounds last.
run_tooling_scenario() {
  local round kind rss
  for ((round = 1; round <= ROUNDS; round++)); do
    start_mock "tooling-$round" --delay-ms "$TOOLING_DELAY_MS" --catalogue dev-tooling \
      --packagist-like --github-api
    local mock=$mock_pid
    tooling_url=$mock_url
    [[ -n $mock_dist_url && -n $mock_api_url ]] ||
      die "tooling-$round published no codeload or GitHub API host"
    # No github_token: the proxy takes zipballs from codeload itself, as in production.
    cat >"$work/tooling-$round.toml" <<EOF
github_api_url = "$mock_api_url"
github_codeload_url = "$mock_dist_url"

[[upstream]]
name = "packagist"
url = "$tooling_url"
EOF
    if ((round % 2)); then
      run_tooling direct "$round"
      run_tooling cold "$round"
      run_tooling warm "$round"
    else
      run_tooling cold "$round"
      run_tooling warm "$round"
      run_tooling direct "$round"
    fi
    rss=$(peak_rss_kib "$tooling_pid")
    ((rss <= tooling_proxy_rss_kib)) || tooling_proxy_rss_kib=$rss
    stop_pid "$tooling_pid"
    stop_pid "$mock"
    for kind in cold warm; do
      diff <(locked_set "$work/tooling-direct-$round") <(locked_set "$work/tooling-$kind-$round") \
        >"$work/tooling-$kind-$round.lockdiff" ||
        die "round $round: the $kind install locked other packages than the direct one; see $work/tooling-$kind-$round.lockdiff"
    done
  done
  tooling_count=$(jq '.packages | length' "$work/tooling-direct-1/project/composer.lock")
  tooling_count=$((tooling_count + $(jq '.["packages-dev"] | length' \
    "$work/tooling-direct-1/project/composer.lock")))
}

report_tooling() {
  local kind round all cpu reqs in_proxy=()
  declare -A med_of all_of cpu_of reqs_of
  declare -A label=(
    [direct]="direct to the upstream and GitHub (baseline)"
    [cold]="through a cold proxy (empty cache)"
    [warm]="through the warm proxy (cache filled by the cold install)"
  )
  for kind in direct cold warm; do
    all=()
    cpu=()
    reqs=()
    for ((round = 1; round <= ROUNDS; round++)); do
      all+=("${tooling_secs[$kind-$round]}")
      cpu+=("${tooling_cpu_secs[$kind-$round]}")
      reqs+=("${tooling_requests[$kind-$round]}")
    done
    med_of[$kind]=$(median "${all[@]}")
    all_of[$kind]="${all[*]}"
    cpu_of[$kind]="${cpu[*]}"
    reqs_of[$kind]="${reqs[*]}"
  done
  echo "### Dev tooling from a packagist-like upstream: \`composer install\`"
  echo
  echo "Project: \`$TOOLING_PACKAGE\` \`$TOOLING_CONSTRAINT\` (require-dev) from a mock of packagist.org (open-ended, minified p2) whose dists are GitHub API zipball URLs on a mock of api.github.com that redirects to a codeload host; $tooling_count packages. Every request to the three (packagist, API, codeload) delayed ${TOOLING_DELAY_MS} ms. Direct: Composer follows each API redirect (no token). Proxy: no github_token, zipballs straight from codeload. Empty Composer cache and vendor directory every time; the lock resolved anew every time. Fresh mocks every round; median of $ROUNDS rounds; odd rounds run direct first, even rounds last. Composer CPU: user + system seconds of Composer and its unzip processes; a warm install much longer than that, and than the time the proxy spent on it (below), waited for a CPU that other work on the machine held."
  echo
  echo "| install | median s | each round s | Composer CPU s, each round | upstream requests, each round |"
  echo "|---|---:|---|---|---|"
  for kind in direct cold warm; do
    echo "| ${label[$kind]} | ${med_of[$kind]} | ${all_of[$kind]// / / } | ${cpu_of[$kind]// / / } | ${reqs_of[$kind]// / / } |"
  done
  for ((round = 1; round <= ROUNDS; round++)); do
    in_proxy+=("${tooling_warm_proxy_secs[$round]}")
  done
  local joined="${in_proxy[*]}"
  echo
  echo "Time the warm proxy spent on the warm install's requests (the sum of their durations in its access log), each round: ${joined// / / } s."

  echo
  local cold_ratio warm_ratio
  cold_ratio=$(ratio "${med_of[cold]}" "${med_of[direct]}")
  warm_ratio=$(ratio "${med_of[warm]}" "${med_of[direct]}")
  echo "| ratio of medians | value | each round | target | met |"
  echo "|---|---:|---|---|---|"
  echo "| cold proxy ÷ direct | $cold_ratio | $(pairwise_ratios "${all_of[cold]}" "${all_of[direct]}") | ≤ 1.0 | $(meets "$cold_ratio" '<=' 1.0) |"
  echo "| warm proxy ÷ direct | $warm_ratio | $(pairwise_ratios "${all_of[warm]}" "${all_of[direct]}") | ≤ 0.3 | $(meets "$warm_ratio" '<=' 0.3) |"
}

# The report of a BENCH_ONLY=tooling run.
report_tooling_only() {
  echo "## composer-proxy benchmark: dev tooling only"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), built from commit $build_commit, $(nproc) CPUs, $(composer --version 2>/dev/null | awk '{print $1, $3}'). 1-minute load average before: $load_before; at the end: $(cut -d' ' -f1 /proc/loadavg)."
  echo
  echo "Reproduce: \`BENCH_ONLY=tooling BENCH_ROUNDS=$ROUNDS BENCH_TOOLING_DELAY_MS=$TOOLING_DELAY_MS bench/run.sh\`"
  echo
  report_tooling
  echo
  echo "Proxy peak RSS (VmHWM): at most $(tooling_rss_mib) MiB after a round."
}

# The proxy's largest peak RSS after a round, in MiB.
tooling_rss_mib() { echo $((tooling_proxy_rss_kib / 1024)); }
