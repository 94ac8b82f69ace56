#!/usr/bin/env bash
# Benchmark for issue 3 ("Done means" 2), issue 11 ("Done means" 2) and issue 12 ("Done
# means" 3). One run measures, each against a baseline measured in the same run:
# 1. cache hits (packages.json, a p2 file, 100 KB and 5 MB archives): the proxy against
#    nginx serving the same bytes from disk, both for one upstream (flat configuration) and
#    for the merged repository of three [[upstream]] tables, so the merged ratios can be
#    read against today's single-upstream ones; BENCH_ONLY=hits also gives each server's CPU
#    time per answer;
# 2. a cold `composer install` of the Magento product through a cold proxy against Composer
#    going straight to the same slow upstream (BENCH_DELAY_MS per request);
# 3. a cold and a warm `composer install` of the three-upstream project (Magento product,
#    Hyvä theme, packagist libraries) through the merged repository against Composer listing
#    the three upstreams itself, with credentials; BENCH_MULTI_DELAY_MS on every upstream
#    request (the three mocks and packagist's dist host). Warm: the proxy's cache filled,
#    a fresh project, vendor directory and Composer cache. Medians over BENCH_ROUNDS rounds;
# 4. a dev-tooling install (phpunit/phpunit and its dependencies) from a packagist-like
#    upstream with GitHub API dists, BENCH_TOOLING_DELAY_MS on every request: Composer going
#    direct against a cold and a warm proxy (bench/tooling.sh). BENCH_ONLY=tooling runs only
#    this one;
# 5. warm archive throughput of a proxy keeping archives in a bucket (moto's S3 server) behind
#    its local tier against one with a local directory only, as a ratio (bench/bucket.sh).
#    BENCH_ONLY=bucket runs only this one.
# 6. warm p2 and 100 KB archive requests through a [[view]] with a token bound to it against
#    the merged root with an organisation-wide token, as a ratio (bench/views.sh).
#    BENCH_ONLY=views runs only this one.
# 7. warm archive throughput with the usage record on against off, as a ratio
#    (bench/usage.sh). BENCH_ONLY=usage runs only this one; BENCH_ONLY=views,usage runs 6 and 7
#    together.
# It prints markdown tables and the command that reproduces them (also written to
# $BENCH_RESULTS, default bench/results.md, or bench/results-<BENCH_ONLY>.md with BENCH_ONLY).
#
# Everything runs on loopback: the upstreams are the tests' mocks of repo.magento.com, of a
# vendor repository under a path with user `token`, and of packagist.org (open-ended,
# minified, dists on a second origin; for scenario 4 behind a mock of GitHub's API,
# tests/integration/support/github.rs) (examples/mock_upstream.rs, wrapping
# tests/integration/support/mock_upstream.rs and the catalogues of tests/integration/support/catalogue.rs), started
# as processes; tests/integration/support/upstreams.rs describes the same three. Ports come from the kernel
# (127.0.0.1:0) for our own programs; nginx cannot bind port 0, so it gets a random free
# port, retried if taken. Every wait is bounded, every process started here is stopped on
# exit, and all files live in one temporary directory that is removed afterwards
# (BENCH_KEEP=1 keeps it for inspection).
#
# Settings (environment): BENCH_DURATION_SECS (per wrk run, default 10), BENCH_ROUNDS (3),
# BENCH_CONNECTIONS (64), BENCH_WRK_THREADS (2), BENCH_MODULES (100),
# BENCH_DELAY_MS (300), BENCH_MULTI_DELAY_MS (100), BENCH_TOOLING_DELAY_MS (100), BENCH_NOISE
# (0.10: the least relative difference between merged and single-upstream ratios counted as
# more than noise; also the band the views ratio may fall below 1), BENCH_ONLY (empty:
# everything; `tooling`: scenario 4 alone; `bucket`: scenario 5 alone; `views`: scenario 6
# alone; `usage`: scenario 7 alone; `hits`: issue 23's cache hits against nginx alone, on
# BENCH_OBJECTS, default all four of packages.json p2-framework archive-100k archive-5m),
# BENCH_PROXY_SETTINGS (extra VAR=value settings for every proxy started, space-separated, for
# experiments), BENCH_RESULTS, BENCH_KEEP. Cargo honours CARGO_TARGET_DIR as usual.
#
# Needs: cargo, nginx, wrk, composer (with php-zip, php-curl, php-mbstring), curl, jq,
# ss, python3 with moto[server] (scenario 5). Missing Debian packages are installed with
# apt-get.

set -euo pipefail
# Decimal points in wrk's output, awk and printf, whatever the caller's locale.
export LC_ALL=C

readonly DURATION_SECS=${BENCH_DURATION_SECS:-10}
# Single 10 s runs on a small machine vary by tens of percent (nginx's p99 most of all), so
# each measurement is repeated, proxy and nginx taking turns, and the median reported.
readonly ROUNDS=${BENCH_ROUNDS:-3}
readonly CONNECTIONS=${BENCH_CONNECTIONS:-64}
readonly WRK_THREADS=${BENCH_WRK_THREADS:-2}
readonly MODULES=${BENCH_MODULES:-100}
readonly DELAY_MS=${BENCH_DELAY_MS:-300}
readonly MULTI_DELAY_MS=${BENCH_MULTI_DELAY_MS:-100}
readonly TOOLING_DELAY_MS=${BENCH_TOOLING_DELAY_MS:-100}
readonly ONLY=${BENCH_ONLY:-}
readonly NOISE=${BENCH_NOISE:-0.10}
readonly SMALL_ARCHIVE_BYTES=$((100 * 1024))
readonly LARGE_ARCHIVE_BYTES=$((5 * 1024 * 1024))
# The key pair the mock accepts (tests/integration/support/mock_upstream.rs TEST_PUBLIC_KEY/PRIVATE_KEY).
readonly PUBLIC_KEY=0123456789abcdef0123456789abcdef
readonly PRIVATE_KEY=fedcba9876543210fedcba9876543210
readonly PRODUCT=magento/product-community-edition
readonly PRODUCT_VERSION=2.4.7
# The vendor repository (tests/integration/support/upstreams.rs HYVA_PREFIX, HYVA_LICENCE; user `token`).
readonly HYVA_PREFIX=/hyva-project
readonly HYVA_USER=token
readonly HYVA_LICENCE=hyva-licence-0123456789abcdef
# The three-upstream project (tests/multi_upstream.rs PROJECT): the product and its extension
# from magento, the theme from hyva (it also needs psr/log), libraries and a `magento/` name
# from packagist.
readonly MULTI_REQUIRE='{
  "magento/product-community-edition": "2.4.7",
  "hyva-themes/magento2-default-theme": "^1.3",
  "laminas/laminas-stdlib": "^3.18",
  "magento/magento-composer-installer": "^0.4"
}'
# One installed package from each upstream, checked after every install of that project.
readonly MULTI_CHECK=(magento/framework hyva-themes/magento2-default-theme
  laminas/laminas-stdlib psr/log)
# Upper bounds, so a hung component fails the run instead of stalling it.
readonly START_TIMEOUT_SECS=30
readonly COMPOSER_TIMEOUT_SECS=600
# Safety net for the mocks if this script is killed with SIGKILL and cannot clean up.
readonly MOCK_MAX_SECS=1800

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
readonly RESULTS=${BENCH_RESULTS:-$repo_root/bench/results${ONLY:+-$ONLY}.md}

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
[[ -z $ONLY || $ONLY =~ ^(hits|tooling|bucket|views|usage|views,usage)$ ]] ||
  die "BENCH_ONLY must be empty, 'hits', 'tooling', 'bucket', 'views', 'usage' or 'views,usage', not '$ONLY'"

# --- Tools -----------------------------------------------------------------------------

ensure_tools() {
  local missing=()
  command -v nginx >/dev/null || missing+=(nginx-light)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v composer >/dev/null || missing+=(composer)
  command -v php >/dev/null || missing+=(php-cli)
  command -v unzip >/dev/null || missing+=(unzip)
  command -v curl >/dev/null || missing+=(curl)
  command -v jq >/dev/null || missing+=(jq)
  command -v ss >/dev/null || missing+=(iproute2)
  if command -v php >/dev/null; then
    local modules
    modules=$(php -m)
    grep -qix zip <<<"$modules" || missing+=(php-zip)
    grep -qix curl <<<"$modules" || missing+=(php-curl)
    grep -qix mbstring <<<"$modules" || missing+=(php-mbstring)
  else
    missing+=(php-zip php-curl php-mbstring)
  fi
  if ((${#missing[@]} > 0)); then
    log "installing ${missing[*]} with apt-get"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  command -v cargo >/dev/null || die "cargo is not on PATH"
}

# --- Processes -------------------------------------------------------------------------

pids=()
work=""

cleanup() {
  local status=$?
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Bounded wait for a clean exit (the proxy drains, nginx stops its workers), then force.
  local tries=0
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((tries < 50)); do
      sleep 0.1
      tries=$((tries + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n $work && -d $work ]]; then
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
      log "kept $work"
    else
      rm -rf "$work"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls "$@" every 0.1 s until it succeeds, for at most START_TIMEOUT_SECS.
wait_until() {
  local tries=$((START_TIMEOUT_SECS * 10))
  while ((tries > 0)); do
    "$@" && return 0
    sleep 0.1
    tries=$((tries - 1))
  done
  return 1
}

alive() { kill -0 "$1" 2>/dev/null; }

# Starts a mock upstream named $1 with the options that follow (examples/mock_upstream.rs);
# sets mock_url (the repository URL), mock_dist_url (packagist's dist host, else empty),
# mock_api_url (the GitHub API mock's, with --github-api, else empty) and mock_pid. Every
# request it receives (on any of its origins) is appended to $work/$1.requests.
start_mock() {
  local name=$1
  shift
  local url_file=$work/$name.url dist_file=$work/$name.dist-url api_file=$work/$name.api-url
  local extra_args=()
  [[ " $* " != *" --packagist-like "* ]] || extra_args+=(--dist-host-url-file "$dist_file")
  [[ " $* " != *" --github-api "* ]] || extra_args+=(--github-api-url-file "$api_file")
  "$bin/mock_upstream" --modules "$MODULES" --url-file "$url_file" \
    --request-log "$work/$name.requests" --max-secs "$MOCK_MAX_SECS" "${extra_args[@]}" "$@" \
    >"$work/$name.log" 2>&1 &
  mock_pid=$!
  pids+=("$mock_pid")
  wait_until test -s "$url_file" || die "$name did not start; see $work/$name.log"
  mock_url=$(<"$url_file")
  mock_dist_url=""
  [[ ! -s $dist_file ]] || mock_dist_url=$(<"$dist_file")
  mock_api_url=""
  [[ ! -s $api_file ]] || mock_api_url=$(<"$api_file")
  log "$name: $mock_url${mock_dist_url:+, dists on $mock_dist_url}${mock_api_url:+, GitHub API on $mock_api_url} (pid $mock_pid)"
}

# Starts the three upstreams of a Magento project (tests/integration/support/upstreams.rs), every
# request to each (dist host included) delayed by $2 ms; the magento one also takes the
# options after $2. Names them $1-magento, $1-hyva, $1-packagist and writes the merged
# proxy's configuration, three [[upstream]] tables in priority order, to $work/$1.toml.
# Sets magento_url, hyva_url, packagist_url and packagist_dist_url.
start_three_mocks() {
  local set=$1 delay=$2
  shift 2
  start_mock "$set-magento" --delay-ms "$delay" "$@"
  magento_url=$mock_url
  start_mock "$set-hyva" --delay-ms "$delay" --catalogue vendor --protocol p2 \
    --path-prefix "$HYVA_PREFIX" --public-key "$HYVA_USER" --private-key "$HYVA_LICENCE"
  hyva_url=$mock_url
  start_mock "$set-packagist" --delay-ms "$delay" --catalogue packagist --packagist-like
  packagist_url=$mock_url
  packagist_dist_url=$mock_dist_url
  [[ -n $packagist_dist_url ]] || die "$set-packagist published no dist host"
  cat >"$work/$set.toml" <<EOF
[[upstream]]
name = "magento"
url = "$magento_url"
public_key = "$PUBLIC_KEY"
private_key = "$PRIVATE_KEY"

[[upstream]]
name = "hyva"
url = "$hyva_url"
public_key = "$HYVA_USER"
private_key = "$HYVA_LICENCE"

[[upstream]]
name = "packagist"
url = "$packagist_url"
allowed_hosts = ["$packagist_dist_url"]
EOF
}

# Lines in the request logs of the mocks named $@ (all their requests so far, both origins).
upstream_requests() {
  local name total=0 n
  sleep 0.2 # the mocks append their log every 50 ms
  for name in "$@"; do
    n=$(wc -l <"$work/$name.requests" 2>/dev/null || echo 0)
    total=$((total + n))
  done
  echo "$total"
}

# Starts the release proxy in front of the single upstream $2 (the flat configuration) with
# its cache in $3; sets proxy_url and proxy_pid.
start_proxy() {
  local name=$1 upstream=$2 cache=$3
  launch_proxy "$name" "$cache" \
    COMPOSER_PROXY_UPSTREAM_URL="$upstream" \
    COMPOSER_PROXY_PUBLIC_KEY="$PUBLIC_KEY" \
    COMPOSER_PROXY_PRIVATE_KEY="$PRIVATE_KEY"
}

# Starts the release proxy configured by the [[upstream]] tables in $2 with its cache in $3;
# sets proxy_url and proxy_pid.
start_merged_proxy() {
  local name=$1 config=$2 cache=$3
  launch_proxy "$name" "$cache" -- --config "$config"
}

# Starts the release proxy named $1 with its cache in $2, the VAR=value settings that follow
# and, after `--`, command-line arguments; sets proxy_url and proxy_pid. The environment is
# cleared so nothing from the caller's COMPOSER_PROXY_* or COMPOSER_AUTH leaks in.
launch_proxy() {
  local name=$1 cache=$2
  shift 2
  local settings=() args=()
  # BENCH_PROXY_SETTINGS: more VAR=value settings for every proxy, space-separated, for
  # experiments (e.g. COMPOSER_PROXY_LOG_LEVEL=warn); named in the report's reproduce line.
  read -ra settings <<<"${BENCH_PROXY_SETTINGS:-}"
  while (($# > 0)) && [[ $1 != -- ]]; do
    settings+=("$1")
    shift
  done
  (($# == 0)) || shift
  args=("$@")
  local log_file=$work/$name.log
  mkdir -p "$cache"
  # JSON logs, so the bound address can be read reliably from the start-up line.
  # A long metadata TTL keeps background revalidation out of the measurements (nginx
  # does none either); a short grace lets the run end promptly.
  env -i PATH="$PATH" \
    COMPOSER_PROXY_LISTEN=127.0.0.1:0 \
    COMPOSER_PROXY_CACHE_DIR="$cache" \
    COMPOSER_PROXY_LOG_FORMAT=json \
    COMPOSER_PROXY_METADATA_TTL_SECS=86400 \
    COMPOSER_PROXY_SHUTDOWN_GRACE_SECS=2 \
    "${settings[@]}" \
    "$bin/composer-proxy" "${args[@]}" >"$log_file" 2>&1 &
  proxy_pid=$!
  pids+=("$proxy_pid")
  proxy_url=""
  local tries=$((START_TIMEOUT_SECS * 10))
  while [[ -z $proxy_url ]] && ((tries > 0)); do
    alive "$proxy_pid" || die "$name exited at start; see $log_file"
    proxy_url=$(jq -rR 'fromjson? | select(.message == "composer-proxy listening") | .public_url' \
      "$log_file" | head -n1)
    [[ -n $proxy_url ]] || sleep 0.1
    tries=$((tries - 1))
  done
  [[ -n $proxy_url ]] || die "$name did not log its address; see $log_file"
  log "$name: $proxy_url (pid $proxy_pid)"
}

# Stops a process started here (SIGTERM, bounded wait, then SIGKILL).
stop_pid() {
  local pid=$1 tries=50
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && ((tries > 0)); do
    sleep 0.1
    tries=$((tries - 1))
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local kept=() p
  for p in "${pids[@]}"; do
    [[ $p == "$pid" ]] || kept+=("$p")
  done
  pids=("${kept[@]}")
}

# Starts nginx (master in the foreground, as our child) named $1 serving $2; sets nginx_url
# and nginx_pid.
start_nginx() {
  local name=$1 root=$2
  local dir=$work/$name
  mkdir -p "$dir/tmp"
  local low _
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  # Ports below the ephemeral range cannot be taken by an outgoing connection meanwhile.
  local floor=20000
  ((low > floor + 1000)) || floor=10000
  local attempt port
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    port=$((floor + RANDOM % (low - floor)))
    if [[ -n $(ss -ltnH "sport = :$port") ]]; then
      continue
    fi
    # worker_processes auto: one per core, as the proxy's runtime has one worker thread
    # per core. Access log on, as the proxy logs every request too. sendfile is nginx's
    # ordinary static-file path.
    local user_line=""
    ((EUID != 0)) || user_line="user root root;"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes auto;
$user_line
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    types { application/json json; application/zip zip; }
    default_type application/octet-stream;
    access_log $dir/access.log;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$port;
        root $root;
    }
}
EOF
    nginx -e "$dir/error.log" -c "$dir/nginx.conf" >>"$dir/stdout.log" 2>&1 &
    nginx_pid=$!
    local tries=50
    while alive "$nginx_pid" && ((tries > 0)); do
      if [[ -n $(ss -ltnH "sport = :$port") ]]; then
        nginx_url=http://127.0.0.1:$port
        pids+=("$nginx_pid")
        log "$name: $nginx_url (pid $nginx_pid, attempt $attempt)"
        return 0
      fi
      sleep 0.1
      tries=$((tries - 1))
    done
    kill -TERM "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  done
  die "$name did not start; see $dir/error.log"
}

# Peak resident set size of a process, in KiB.
peak_rss_kib() {
  awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

# --- Measuring -------------------------------------------------------------------------

# wrk prints latencies as 812.00us, 1.23ms, 2.50s or 1.00m; converts to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n
  }'
}

# CPU time (user and system, in clock ticks) used so far by process $1 and its children
# (nginx's workers), threads included.
cpu_ticks() {
  local p total=0 u s
  for p in "$1" $(pgrep -P "$1"); do
    # Fields after the command name, which ends with ")": utime and stime are 12th and 13th.
    read -r u s < <(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12, $13 }') ||
      continue
    total=$((total + ${u:-0} + ${s:-0}))
  done
  echo "$total"
}

# Runs wrk against $2 and prints "rps p99_ms errors"; $1 names the output file; further
# arguments go to wrk (e.g. -H "Authorization: …"). With MEASURE_PID set, a fourth field: the
# CPU time that process (and its children) used per answer during the recorded run, in µs.
measure() {
  local name=$1 url=$2
  shift 2
  local out=$work/wrk-$name.txt
  # A short unrecorded run first: connections, page cache and allocator warm for both.
  wrk -c"$CONNECTIONS" -t"$WRK_THREADS" -d1s "$@" "$url" >/dev/null
  local ticks="" cpu=""
  [[ -z ${MEASURE_PID:-} ]] || ticks=$(cpu_ticks "$MEASURE_PID")
  wrk -c"$CONNECTIONS" -t"$WRK_THREADS" -d"${DURATION_SECS}s" --timeout 10s --latency "$@" "$url" >"$out"
  if [[ -n $ticks ]]; then
    cpu=$(awk -v t=$(($(cpu_ticks "$MEASURE_PID") - ticks)) -v hz="$(getconf CLK_TCK)" '
      / requests in / { n = $1 } END { if (n > 0) printf " %.2f", t / hz * 1e6 / n }' "$out")
  fi
  local rps p99 non2xx socket_errors
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  p99=$(awk '$1 == "99%" { print $2 }' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
  socket_errors=$(awk -F'[ ,]+' '/Socket errors:/ {
    for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; print s }' "$out")
  [[ -n $rps && -n $p99 ]] || die "could not parse wrk output $out"
  printf '%s %s %s%s\n' "$rps" "$(to_ms "$p99")" "$((${non2xx:-0} + ${socket_errors:-0}))" "$cpu"
}

# The latency distribution of the wrk run named $1 (see measure): "p50 p90 p99 max" in ms.
distribution() {
  local out=$work/wrk-$1.txt p50 p90 p99 max
  p50=$(awk '$1 == "50%" { print $2 }' "$out")
  p90=$(awk '$1 == "90%" { print $2 }' "$out")
  p99=$(awk '$1 == "99%" { print $2 }' "$out")
  max=$(awk '$1 == "Latency" { print $4; exit }' "$out")
  printf '%s %s %s %s\n' "$(to_ms "$p50")" "$(to_ms "$p90")" "$(to_ms "$p99")" "$(to_ms "$max")"
}

# Writes a Composer project requiring the product from repository $2 into $1, with its own
# COMPOSER_HOME and an empty cache; $3, if given, is "host:port" for HTTP Basic with the
# mock's key pair.
make_project() {
  local dir=$1 repo=$2 basic_host=${3:-}
  mkdir -p "$dir/project" "$dir/home" "$dir/cache" "$dir/user"
  jq -n --arg url "$repo" --arg product "$PRODUCT" --arg version "$PRODUCT_VERSION" '{
    name: "composer-proxy/bench-project",
    type: "project",
    license: "proprietary",
    repositories: [{type: "composer", url: $url}, {"packagist.org": false}],
    require: {($product): $version},
    "minimum-stability": "stable",
    config: {"secure-http": false, "allow-plugins": false, "platform-check": false}
  }' >"$dir/project/composer.json"
  if [[ -n $basic_host ]]; then
    jq -n --arg host "$basic_host" --arg user "$PUBLIC_KEY" --arg pass "$PRIVATE_KEY" \
      '{"http-basic": {($host): {username: $user, password: $pass}}}' >"$dir/home/auth.json"
  fi
}

# Writes the three-upstream project (MULTI_REQUIRE) into $1, like make_project. With $2
# "direct" it lists the three upstreams of start_three_mocks itself, in priority order, with
# their credentials in auth.json (Composer merging them on its own); otherwise $2 is the one
# repository it lists (the proxy), with no auth.json.
make_multi_project() {
  local dir=$1 target=$2
  mkdir -p "$dir/project" "$dir/home" "$dir/cache" "$dir/user"
  local repos
  if [[ $target == direct ]]; then
    repos=$(jq -n --arg m "$magento_url" --arg h "$hyva_url" --arg p "$packagist_url" \
      '[{type: "composer", url: $m}, {type: "composer", url: $h}, {type: "composer", url: $p}]')
    local magento_host=${magento_url#http://} hyva_host=${hyva_url#http://}
    magento_host=${magento_host%%/*}
    hyva_host=${hyva_host%%/*}
    jq -n --arg mh "$magento_host" --arg mu "$PUBLIC_KEY" --arg mp "$PRIVATE_KEY" \
      --arg hh "$hyva_host" --arg hu "$HYVA_USER" --arg hp "$HYVA_LICENCE" \
      '{"http-basic": {($mh): {username: $mu, password: $mp}, ($hh): {username: $hu, password: $hp}}}' \
      >"$dir/home/auth.json"
  else
    repos=$(jq -n --arg url "$target" '[{type: "composer", url: $url}]')
  fi
  jq -n --argjson repos "$repos" --argjson require "$MULTI_REQUIRE" '{
    name: "composer-proxy/bench-multi-project",
    type: "project",
    license: "proprietary",
    repositories: ($repos + [{"packagist.org": false}]),
    require: $require,
    "minimum-stability": "stable",
    config: {"secure-http": false, "allow-plugins": false, "platform-check": false}
  }' >"$dir/project/composer.json"
}

# Runs `composer install` in the project under $1 with a hermetic environment and prints
# its wall-clock time in seconds; then checks that the packages named after $1 (default
# magento/framework) were installed. Writes the CPU seconds the install used to
# $1/composer-cpu-secs.
timed_install() {
  local dir=$1
  shift
  local check=("$@")
  ((${#check[@]} > 0)) || check=(magento/framework)
  local started ended
  started=$EPOCHREALTIME
  if ! (cd "$dir/project" && env -i PATH="$PATH" HOME="$dir/user" \
    COMPOSER_HOME="$dir/home" COMPOSER_CACHE_DIR="$dir/cache" \
    COMPOSER_ALLOW_SUPERUSER=1 COMPOSER_NO_INTERACTION=1 LANG=C.UTF-8 \
    timeout "$COMPOSER_TIMEOUT_SECS" composer install --no-interaction --no-ansi --no-progress \
    >"$dir/composer.log" 2>&1); then
    die "composer install failed in $dir; see $dir/composer.log"
  fi
  ended=$EPOCHREALTIME
  # User + system time of Composer and everything it ran (its unzip processes): this runs in
  # a subshell of its own, so the children's times are this install's alone. Far below the
  # wall-clock time, the install was waiting: on upstreams, or for a CPU that other work
  # on the machine held. (`times` straight into a file: in a pipeline it would run in a
  # child of its own, which has no children.)
  times >"$dir/times"
  awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/)
    printf "%.2f\n", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$dir/times" >"$dir/composer-cpu-secs"
  local package
  for package in "${check[@]}"; do
    [[ -f $dir/project/vendor/$package/composer.json ]] ||
      die "composer install in $dir did not install $package"
  done
  awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.2f", b - a }'
}

# The locked packages of the project under $1 as "name version" lines, sorted.
locked_set() {
  jq -r '.packages[] | "\(.name) \(.version)"' "$1/project/composer.lock" | sort
}

# Median of the arguments (numbers).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# For object $1 and server $2: "median_rps median_p99_ms total_errors all_rps", from the
# rounds in the associative array named $3 (default `result`), keyed name-server-round.
summarise() {
  local name=$1 server=$2 round rps p99 errors
  local -n rounds=${3:-result}
  local all_rps=() all_p99=() total_errors=0
  for ((round = 1; round <= ROUNDS; round++)); do
    read -r rps p99 errors _ <<<"${rounds[$name-$server-$round]}"
    all_rps+=("$rps")
    all_p99+=("$p99")
    total_errors=$((total_errors + errors))
  done
  printf '%s %s %s %s\n' "$(median "${all_rps[@]}")" "$(median "${all_p99[@]}")" \
    "$total_errors" "$(
      IFS=/
      echo "${all_rps[*]}"
    )"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }
# "yes" when $1 $2 $3 holds numerically, e.g. meets 1.02 '>=' 1.0.
meets() {
  awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN {
    ok = (op == ">=") ? (a >= b) : (a <= b); print (ok ? "yes" : "**no**") }'
}

# For object $1: the per-round ratios of server $2 to server $3 on field $4 (1: req/s,
# 2: p99), separated by spaces.
round_ratios() {
  local name=$1 a=$2 b=$3 field=$4 round out=()
  for ((round = 1; round <= ROUNDS; round++)); do
    out+=("$(ratio "$(cut -d' ' -f"$field" <<<"${result[$name-$a-$round]}")" \
      "$(cut -d' ' -f"$field" <<<"${result[$name-$b-$round]}")")")
  done
  echo "${out[*]}"
}
# The largest relative deviation of the numbers from their median, at least NOISE: how far
# a ratio moves between rounds of this run by noise alone.
noise_band() {
  local m
  m=$(median "$@")
  printf '%s\n' "$@" | awk -v m="$m" -v floor="$NOISE" '{
    d = (m == 0) ? 0 : $1 / m - 1; if (d < 0) d = -d; if (d > s) s = d }
    END { if (s < floor) s = floor; printf "%.2f", s }'
}
# Ratios of the numbers in $1 to those in $2 (space-separated lists), joined with /.
pairwise_ratios() {
  local a b i out=()
  read -ra a <<<"$1"
  read -ra b <<<"$2"
  for i in "${!a[@]}"; do
    out+=("$(ratio "${a[$i]}" "${b[$i]}")")
  done
  local joined
  joined=$(printf '%s / ' "${out[@]}")
  echo "${joined% / }"
}

# The median over the rounds of the CPU µs per answer (measure's fourth field) of server $2
# on object $1.
cpu_median() {
  local round values=()
  for ((round = 1; round <= ROUNDS; round++)); do
    values+=("$(cut -d' ' -f4 <<<"${result[$1-$2-$round]}")")
  done
  median "${values[@]}"
}

# BENCH_ONLY=hits: issue 23's figures, the one-upstream proxy against nginx serving the same
# files. Per object the median req/s of each and their ratio, the latency distribution (median
# over rounds of each percentile), each round's ratios, and the targets: p2 files and 100 KB
# archives at >= 1.2x nginx's req/s, 5 MB archives at >= 1.0x its throughput with p99 within
# 1.1x of nginx's.
report_hits_only() {
  local name server round prps nrps pall nall rps_ratio p99_ratio target met
  echo "## composer-proxy against nginx: cache hits"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), built from commit $build_commit, $(nproc) CPUs, $(nginx -v 2>&1 | sed 's/^nginx version: //')."
  echo "wrk -c$CONNECTIONS -t$WRK_THREADS -d${DURATION_SECS}s --latency, keep-alive, identity encoding; $ROUNDS rounds, proxy"
  echo "and nginx alternating within each; medians of the rounds. wrk shares the CPUs with the server in"
  echo "both cases. 1-minute load average before: $load_before; after: $load_after_hits."
  echo
  echo "Reproduce: \`BENCH_ONLY=hits BENCH_OBJECTS='${names[*]}' BENCH_PROXY_SETTINGS='${BENCH_PROXY_SETTINGS:-}' BENCH_DURATION_SECS=$DURATION_SECS BENCH_ROUNDS=$ROUNDS BENCH_CONNECTIONS=$CONNECTIONS BENCH_WRK_THREADS=$WRK_THREADS bench/run.sh\`"
  echo
  echo "| object | bytes | proxy req/s | nginx req/s | ratio | each round | target | met | CPU µs per answer, proxy / nginx |"
  echo "|---|---:|---:|---:|---:|---|---|---|---|"
  local pcpu ncpu
  for name in "${names[@]}"; do
    read -r prps _ _ pall <<<"$(summarise "$name" proxy)"
    read -r nrps _ _ nall <<<"$(summarise "$name" nginx)"
    pcpu=$(cpu_median "$name" proxy)
    ncpu=$(cpu_median "$name" nginx)
    rps_ratio=$(ratio "$prps" "$nrps")
    case $name in
      p2-framework | archive-100k) target="≥ 1.2×" met=$(meets "$rps_ratio" '>=' 1.2) ;;
      archive-5m) target="≥ 1.0×" met=$(meets "$rps_ratio" '>=' 1.0) ;;
      *) target="-" met="-" ;;
    esac
    printf '| %s | %s | %.0f | %.0f | %s | %s | %s | %s | %s / %s (%s×) |\n' "$name" \
      "${sizes[single:$name]}" "$prps" "$nrps" "$rps_ratio" \
      "$(round_ratios "$name" proxy nginx 1 | tr ' ' /)" "$target" "$met" "$pcpu" "$ncpu" \
      "$(ratio "$ncpu" "$pcpu")"
  done
  echo
  echo "CPU per answer: the server's user and system time (nginx's master and workers) during"
  echo "each recorded run over the answers wrk counted, median of the rounds; in brackets nginx's"
  echo "over the proxy's. Unlike req/s it leaves out wrk's own share of the two CPUs; it still moves"
  echo "with where wrk's threads ran, as the kernel's cost of waking them does."
  echo
  echo "Latency (ms; median over the rounds of each percentile):"
  echo
  echo "| object | server | p50 | p90 | p99 | max | p99 each round | p99 ratio | target | met |"
  echo "|---|---|---:|---:|---:|---:|---|---:|---|---|"
  local -A pct
  local i values
  for name in "${names[@]}"; do
    for server in proxy nginx; do
      for i in 1 2 3 4; do
        values=()
        for ((round = 1; round <= ROUNDS; round++)); do
          values+=("$(distribution "$name-$server-$round" | cut -d' ' -f"$i")")
        done
        pct[$server:$i]=$(median "${values[@]}")
      done
      values=()
      for ((round = 1; round <= ROUNDS; round++)); do
        values+=("$(distribution "$name-$server-$round" | cut -d' ' -f3)")
      done
      pct[$server:rounds]=$(IFS=/; echo "${values[*]}")
    done
    p99_ratio=$(ratio "${pct[proxy:3]}" "${pct[nginx:3]}")
    if [[ $name == archive-5m ]]; then
      target="p99 ≤ 1.1×" met=$(meets "$p99_ratio" '<=' 1.1)
    else
      target="-" met="-"
    fi
    printf '| %s | proxy | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" \
      "${pct[proxy:1]}" "${pct[proxy:2]}" "${pct[proxy:3]}" "${pct[proxy:4]}" \
      "${pct[proxy:rounds]}" "$p99_ratio" "$target" "$met"
    printf '| | nginx | %s | %s | %s | %s | %s | | | |\n' \
      "${pct[nginx:1]}" "${pct[nginx:2]}" "${pct[nginx:3]}" "${pct[nginx:4]}" "${pct[nginx:rounds]}"
  done
  echo
  echo "Proxy peak RSS (VmHWM) after the runs: $((warm_rss_kib / 1024)) MiB."
}

# Scenario 4, the dev-tooling install: run_tooling_scenario, report_tooling.
# Followed when both files are given to shellcheck, as .ci/validate-deploy does.
# shellcheck source=bench/tooling.sh disable=SC1091
source "$repo_root/bench/tooling.sh"
# Scenario 5, archives in a bucket: run_bucket_scenario, report_bucket.
# shellcheck source=bench/bucket.sh disable=SC1091
source "$repo_root/bench/bucket.sh"
# Scenario 6, views against the merged root: run_views_scenario, report_views.
# shellcheck source=bench/views.sh disable=SC1091
source "$repo_root/bench/views.sh"
# Scenario 7, the usage record's cost: run_usage_scenario, report_usage (uses bucket.sh's
# warm_object and bucket_dist_path).
# shellcheck source=bench/usage.sh disable=SC1091
source "$repo_root/bench/usage.sh"

# --- Run -------------------------------------------------------------------------------

ensure_tools

# The commit the binaries are built from, taken now: others may commit while this runs.
# "-dirty": the working tree had uncommitted changes, which the build includes.
build_commit=$(git -C "$repo_root" describe --always --dirty 2>/dev/null || echo unknown)
log "building (release) at $build_commit"
cargo build --release --locked --bin composer-proxy --example mock_upstream
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)

work=$(mktemp -d "${TMPDIR:-/tmp}/composer-proxy-bench.XXXXXX")
# Copies, so a concurrent build in a shared target directory cannot swap them mid-run.
bin=$work/bin
mkdir -p "$bin"
cp "$target_dir/release/composer-proxy" "$target_dir/release/examples/mock_upstream" "$bin/"

# Anything else busy on the machine skews both sides, and not equally; say so in the report.
load_before=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load_before" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
  log "WARNING: load average is $load_before on $(nproc) CPUs; the figures will be noisy"
fi

if [[ $ONLY == tooling ]]; then
  run_tooling_scenario
  mkdir -p "$(dirname "$RESULTS")"
  report_tooling_only | tee "$RESULTS"
  log "results written to $RESULTS"
  exit 0
fi
if [[ $ONLY == bucket ]]; then
  run_bucket_scenario
  mkdir -p "$(dirname "$RESULTS")"
  report_bucket_only | tee "$RESULTS"
  log "results written to $RESULTS"
  exit 0
fi
# Views and the usage record (issue 21's figures) alone, or both in one run.
if [[ $ONLY == views || $ONLY == usage || $ONLY == views,usage ]]; then
  [[ $ONLY == usage ]] || run_views_scenario
  [[ $ONLY == views ]] || run_usage_scenario
  mkdir -p "$(dirname "$RESULTS")"
  {
    [[ $ONLY == usage ]] || report_views_only
    [[ $ONLY == views ]] || report_usage_only
  } | tee "$RESULTS"
  log "results written to $RESULTS"
  exit 0
fi

# 1. Warm proxies against nginx: one upstream (the flat configuration, as before tables
# existed) and the merged repository of three upstreams, both in front of the same fast
# magento mock; each with an nginx of its own serving exactly the bytes it serves.
start_three_mocks fast 0 --archive-bytes "$SMALL_ARCHIVE_BYTES" --archive-bytes "$LARGE_ARCHIVE_BYTES"
start_proxy proxy-warm "$magento_url" "$work/cache-warm"
warm_pid=$proxy_pid
declare -A base_url=([single]=$proxy_url)
# BENCH_ONLY=hits (issue 23's figures): the one-upstream proxy against nginx alone.
sets=(single)
servers=(proxy nginx)
if [[ $ONLY != hits ]]; then
  start_merged_proxy proxy-merged-warm "$work/fast.toml" "$work/cache-merged-warm"
  merged_warm_pid=$proxy_pid
  base_url[merged]=$proxy_url
  sets+=(merged)
  servers+=(merged mnginx)
fi

# Proxy-relative paths of the four objects for each set; archive URLs come from the
# proxy's own rewritten metadata (on the merged repository: `/magento/dists/…`).
dist_path() {
  local url_base=$1 package=$2 url
  url=$(curl -fsS "$url_base/p2/$package.json" |
    jq -er --arg p "$package" '.packages[$p][0].dist.url')
  echo "${url#"$url_base"}"
}
names=(packages.json p2-framework archive-100k archive-5m)
# BENCH_OBJECTS narrows the hits mode to some of them (space-separated), e.g. "archive-5m".
if [[ $ONLY == hits && -n ${BENCH_OBJECTS:-} ]]; then
  read -ra names <<<"$BENCH_OBJECTS"
fi
declare -A paths sizes
for set in "${sets[@]}"; do
  paths[$set:packages.json]=/packages.json
  paths[$set:p2-framework]=/p2/magento/framework.json
  paths[$set:archive-100k]=$(dist_path "${base_url[$set]}" "bench/blob-$SMALL_ARCHIVE_BYTES")
  paths[$set:archive-5m]=$(dist_path "${base_url[$set]}" "bench/blob-$LARGE_ARCHIVE_BYTES")
done

# The single proxy's packages.json gains the Composer 1 provider chain once that is built in
# the background after the first upstream listing; measure the final form, the one a warm
# proxy serves. The merged root never offers Composer 1 with several upstreams, but its
# magento upstream builds the chain for its own URL in the same way: wait for that too, so
# no background fetching overlaps the measurements, and for every upstream to be ready.
for set in "${sets[@]}"; do
  curl -fsS -o /dev/null "${base_url[$set]}/packages.json"
done
composer1_ready() {
  [[ $(curl -fsS "${base_url[single]}/readyz" | jq -r .composer1) == true ]]
}
merged_ready() {
  [[ $(curl -fsS "${base_url[merged]}/readyz" |
    jq -r '.status == "ready" and .upstreams.magento.composer1 == true and
      ([.upstreams[].status] | all(. == "ok"))') == true ]]
}
wait_until composer1_ready || die "the proxy's Composer 1 chain was not ready in time"
[[ $ONLY == hits ]] || wait_until merged_ready || die "the merged proxy was not ready in time: $(curl -sS "${base_url[merged]}/readyz")"

# Fetch every object until the proxy answers from its cache (the first archive request
# streams from upstream and stores; the next one must be a hit), and put the same bytes
# into that set's nginx document root under the same paths.
for set in "${sets[@]}"; do
  www=$work/www-$set
  for name in "${names[@]}"; do
    path=${paths[$set:$name]}
    [[ $path == /* ]] || die "no proxy path for $set $name: '$path'"
    mkdir -p "$www$(dirname "$path")"
    hit=""
    for _ in 1 2 3 4 5; do
      cache_status=$(curl -fsS -o "$www$path" -D - "${base_url[$set]}$path" |
        tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache" { print $2 }')
      if [[ $cache_status == HIT ]]; then
        hit=yes
        break
      fi
    done
    [[ -n $hit ]] || die "$set: $path is not served from the proxy's cache after 5 requests"
    sizes[$set:$name]=$(stat -c %s "$www$path")
    log "warm $set: $path (${sizes[$set:$name]} bytes, X-Cache: HIT)"
  done
done

# The servers each round measures, proxy and its nginx taking turns: result keys are
# <object>-<server>-<round>.
declare -A nginx_of=([proxy]=nginx [merged]=mnginx)
declare -A server_url server_pid
server_url[proxy]=${base_url[single]}
server_pid[proxy]=$warm_pid
start_nginx nginx "$work/www-single"
server_url[nginx]=$nginx_url
server_pid[nginx]=$nginx_pid
if [[ $ONLY != hits ]]; then
  server_url[merged]=${base_url[merged]}
  server_pid[merged]=$merged_warm_pid
  start_nginx nginx-merged "$work/www-merged"
  server_url[mnginx]=$nginx_url
  server_pid[mnginx]=$nginx_pid
fi
declare -A set_of=([proxy]=single [nginx]=single [merged]=merged [mnginx]=merged)
for server in "${servers[@]}"; do
  [[ $server == proxy || $server == merged ]] || continue
  for name in "${names[@]}"; do
    path=${paths[${set_of[$server]}:$name]}
    proxy_sum=$(curl -fsS "${server_url[$server]}$path" | sha256sum)
    nginx_sum=$(curl -fsS "${server_url[${nginx_of[$server]}]}$path" | sha256sum)
    [[ $proxy_sum == "$nginx_sum" ]] ||
      die "nginx and the $server proxy serve different bytes for $path"
  done
done

declare -A result
for ((round = 1; round <= ROUNDS; round++)); do
  for name in "${names[@]}"; do
    for server in "${servers[@]}"; do
      path=${paths[${set_of[$server]}:$name]}
      log "round $round/$ROUNDS, wrk ${DURATION_SECS}s: $name via $server"
      result[$name-$server-$round]=$(MEASURE_PID=${server_pid[$server]} \
        measure "$name-$server-$round" "${server_url[$server]}$path")
    done
  done
done
load_after_hits=$(cut -d' ' -f1 /proc/loadavg)
warm_rss_kib=$(peak_rss_kib "$warm_pid")
if [[ $ONLY == hits ]]; then
  mkdir -p "$(dirname "$RESULTS")"
  report_hits_only | tee "$RESULTS"
  log "results written to $RESULTS"
  exit 0
fi
merged_warm_rss_kib=$(peak_rss_kib "$merged_warm_pid")

# 2. Cold install through a cold proxy against straight to the same slow upstream.
start_mock mock-slow --delay-ms "$DELAY_MS"
slow_url=$mock_url
make_project "$work/direct" "$slow_url" "${slow_url#http://}"
log "cold composer install, direct to the ${DELAY_MS} ms upstream"
direct_secs=$(timed_install "$work/direct")
log "direct: ${direct_secs}s"

start_proxy proxy-cold "$slow_url" "$work/cache-cold"
cold_pid=$proxy_pid
make_project "$work/proxied" "$proxy_url"
log "cold composer install through a cold proxy"
proxied_secs=$(timed_install "$work/proxied")
log "through the proxy: ${proxied_secs}s"
cold_rss_kib=$(peak_rss_kib "$cold_pid")

direct_count=$(jq '.packages | length' "$work/direct/project/composer.lock")
proxied_count=$(jq '.packages | length' "$work/proxied/project/composer.lock")
[[ $direct_count == "$proxied_count" ]] ||
  die "direct install locked $direct_count packages, proxied $proxied_count"

# 3. The three-upstream project, every upstream request (dist host too) delayed by
# MULTI_DELAY_MS: Composer listing the three upstreams itself, with credentials, against a
# cold merged proxy (fresh cache) and then the same proxy warm (fresh project, vendor
# directory and Composer cache). Each round starts a new cold proxy; odd rounds run the
# direct install first, even rounds last, so drift on the machine does not favour one side.
start_three_mocks slow "$MULTI_DELAY_MS"
slow_mocks=(slow-magento slow-hyva slow-packagist)
declare -A multi_secs multi_requests
multi_proxy_rss_kib=0
run_multi() {
  local kind=$1 round=$2 dir=$work/multi-$1-$2 before after
  case $kind in
    direct) make_multi_project "$dir" direct ;;
    cold)
      start_merged_proxy "proxy-multi-$round" "$work/slow.toml" "$work/cache-multi-$round"
      multi_pid=$proxy_pid
      multi_url=$proxy_url
      make_multi_project "$dir" "$multi_url"
      ;;
    warm) make_multi_project "$dir" "$multi_url" ;;
  esac
  before=$(upstream_requests "${slow_mocks[@]}")
  log "round $round/$ROUNDS: three-upstream composer install, $kind"
  multi_secs[$kind-$round]=$(timed_install "$dir" "${MULTI_CHECK[@]}")
  after=$(upstream_requests "${slow_mocks[@]}")
  multi_requests[$kind-$round]=$((after - before))
  log "$kind: ${multi_secs[$kind-$round]}s, ${multi_requests[$kind-$round]} upstream requests"
}
for ((round = 1; round <= ROUNDS; round++)); do
  if ((round % 2)); then
    run_multi direct "$round"
    run_multi cold "$round"
    run_multi warm "$round"
  else
    run_multi cold "$round"
    run_multi warm "$round"
    run_multi direct "$round"
  fi
  rss=$(peak_rss_kib "$multi_pid")
  ((rss <= multi_proxy_rss_kib)) || multi_proxy_rss_kib=$rss
  stop_pid "$multi_pid"
  # The same packages at the same versions, whichever way Composer went.
  for kind in cold warm; do
    diff <(locked_set "$work/multi-direct-$round") <(locked_set "$work/multi-$kind-$round") \
      >"$work/multi-$kind-$round.lockdiff" ||
      die "round $round: the $kind install locked other packages than the direct one; see $work/multi-$kind-$round.lockdiff"
  done
done
multi_count=$(jq '.packages | length' "$work/multi-direct-1/project/composer.lock")

# 4. The dev-tooling install from a packagist-like upstream with GitHub dists (bench/tooling.sh).
run_tooling_scenario

# 5. Archives in a bucket against a local directory only (bench/bucket.sh).
run_bucket_scenario

# 6. A view against the merged root (bench/views.sh).
run_views_scenario

# 7. The usage record on against off (bench/usage.sh).
run_usage_scenario
load_at_end=$(cut -d' ' -f1 /proc/loadavg)

# --- Report ----------------------------------------------------------------------------

report() {
  echo "## composer-proxy benchmark"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), built from commit $build_commit, $(nproc) CPUs, $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(composer --version 2>/dev/null | awk '{print $1, $3}')."
  echo "wrk -c$CONNECTIONS -t$WRK_THREADS -d${DURATION_SECS}s --latency, keep-alive, identity encoding;"
  echo "median of $ROUNDS rounds (proxy and nginx alternating); wrk shares the CPUs with the"
  echo "server in both cases. Catalogue: $MODULES modules. 1-minute load average before the"
  echo "measurements (other work on the machine): $load_before; after the wrk runs: $load_after_hits;"
  echo "at the end: $load_at_end."
  echo
  echo "Reproduce: \`$reproduce\`"
  echo
  echo "### Cache hits, one upstream (flat configuration)"
  echo
  echo "| object | bytes | proxy req/s | nginx req/s | req/s ratio | proxy p99 ms | nginx p99 ms | p99 ratio | errors (proxy/nginx) | target | met |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
  local name prps pp99 perr pall nrps np99 nerr nall rps_ratio p99_ratio target met
  local rounds_lines=()
  for name in "${names[@]}"; do
    read -r prps pp99 perr pall <<<"$(summarise "$name" proxy)"
    read -r nrps np99 nerr nall <<<"$(summarise "$name" nginx)"
    rounds_lines+=("- $name: proxy $pall, nginx $nall")
    rps_ratio=$(ratio "$prps" "$nrps")
    p99_ratio=$(ratio "$pp99" "$np99")
    if [[ $name == archive-5m ]]; then
      target="req/s ≥ 0.9×"
      met=$(meets "$rps_ratio" '>=' 0.9)
    else
      target="req/s ≥ 1.0×, p99 ≤ 1.0×"
      met=$(meets "$rps_ratio" '>=' 1.0)
      [[ $(meets "$p99_ratio" '<=' 1.0) == yes ]] || met="**no**"
    fi
    # The backticks are markdown code spans, not command substitution.
    # shellcheck disable=SC2016
    printf '| %s `%s` | %s | %.0f | %.0f | %s | %.2f | %.2f | %s | %s/%s | %s | %s |\n' \
      "$name" "${paths[single:$name]}" "${sizes[single:$name]}" "$prps" "$nrps" "$rps_ratio" \
      "$pp99" "$np99" "$p99_ratio" "$perr" "$nerr" "$target" "$met"
  done
  echo
  echo "req/s of each round:"
  echo
  printf '%s\n' "${rounds_lines[@]}"
  local large_mbps
  read -r prps _ <<<"$(summarise archive-5m proxy)"
  read -r nrps _ <<<"$(summarise archive-5m nginx)"
  large_mbps=$(awk -v p="$prps" -v n="$nrps" -v s="${sizes[single:archive-5m]}" \
    'BEGIN { printf "proxy %.0f MB/s, nginx %.0f MB/s", p * s / 1e6, n * s / 1e6 }')
  echo
  echo "5 MB archive throughput: $large_mbps."
  echo
  report_merged
  echo
  echo "### Cold install, one upstream"
  echo
  local install_ratio
  install_ratio=$(ratio "$proxied_secs" "$direct_secs")
  echo "| cold \`composer install\` ($PRODUCT $PRODUCT_VERSION, $proxied_count packages, upstream delay ${DELAY_MS} ms/request, empty Composer cache) | seconds |"
  echo "|---|---:|"
  echo "| direct to the upstream | $direct_secs |"
  echo "| through a cold proxy | $proxied_secs |"
  echo "| ratio proxy/direct (target ≤ 0.25) | $install_ratio $(meets "$install_ratio" '<=' 0.25) |"
  echo
  echo
  report_multi
  echo
  report_tooling
  echo
  report_bucket
  echo
  report_views
  echo
  report_usage
  echo
  echo "Proxy peak RSS (VmHWM): $((warm_rss_kib / 1024)) MiB (one upstream) and $((merged_warm_rss_kib / 1024)) MiB (merged) after the wrk runs; $((cold_rss_kib / 1024)) MiB after the cold one-upstream install; at most $((multi_proxy_rss_kib / 1024)) MiB after a round of three-upstream installs and $(tooling_rss_mib) MiB after a round of dev-tooling installs."
}

# Issue 11: hits on the merged root against nginx, next to the one-upstream ratios of the
# same run. "Within noise": the merged ratio is no worse than the one-upstream ratio by more
# than that ratio's own spread between rounds (at least NOISE).
report_merged() {
  echo "### Cache hits on the merged root (three upstreams), against today's one-upstream ratios"
  echo
  echo "| object | bytes | merged req/s | nginx req/s | req/s ratio | one-upstream req/s ratio | merged ÷ one-upstream | merged p99 ms | nginx p99 ms | p99 ratio | one-upstream p99 ratio | merged ÷ one-upstream | errors (merged/nginx) | noise band (req/s, p99) | within noise |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
  local name mrps mp99 merr mall nrps np99 nerr nall srps sp99 snrps snp99 _
  local m_rps_ratio s_rps_ratio m_p99_ratio s_p99_ratio rel_rps rel_p99 band_rps band_p99 met
  local rounds_lines=()
  for name in "${names[@]}"; do
    read -r mrps mp99 merr mall <<<"$(summarise "$name" merged)"
    read -r nrps np99 nerr nall <<<"$(summarise "$name" mnginx)"
    read -r srps sp99 _ <<<"$(summarise "$name" proxy)"
    read -r snrps snp99 _ <<<"$(summarise "$name" nginx)"
    m_rps_ratio=$(ratio "$mrps" "$nrps")
    s_rps_ratio=$(ratio "$srps" "$snrps")
    m_p99_ratio=$(ratio "$mp99" "$np99")
    s_p99_ratio=$(ratio "$sp99" "$snp99")
    rel_rps=$(ratio "$m_rps_ratio" "$s_rps_ratio")
    rel_p99=$(ratio "$m_p99_ratio" "$s_p99_ratio")
    # shellcheck disable=SC2046 # one ratio per round
    band_rps=$(noise_band $(round_ratios "$name" proxy nginx 1))
    # shellcheck disable=SC2046
    band_p99=$(noise_band $(round_ratios "$name" proxy nginx 2))
    met=$(meets "$rel_rps" '>=' "$(awk -v b="$band_rps" 'BEGIN { print 1 - b }')")
    [[ $(meets "$rel_p99" '<=' "$(awk -v b="$band_p99" 'BEGIN { print 1 + b }')") == yes ]] ||
      met="**no**"
    rounds_lines+=("- $name: merged $mall, nginx $nall; req/s ratio merged $(round_ratios "$name" merged mnginx 1 | tr ' ' /), one-upstream $(round_ratios "$name" proxy nginx 1 | tr ' ' /); p99 ratio merged $(round_ratios "$name" merged mnginx 2 | tr ' ' /), one-upstream $(round_ratios "$name" proxy nginx 2 | tr ' ' /)")
    # The backticks are markdown code spans, not command substitution.
    # shellcheck disable=SC2016
    printf '| %s `%s` | %s | %.0f | %.0f | %s | %s | %s | %.2f | %.2f | %s | %s | %s | %s/%s | ±%s, ±%s | %s |\n' \
      "$name" "${paths[merged:$name]}" "${sizes[merged:$name]}" "$mrps" "$nrps" "$m_rps_ratio" \
      "$s_rps_ratio" "$rel_rps" "$mp99" "$np99" "$m_p99_ratio" "$s_p99_ratio" "$rel_p99" \
      "$merr" "$nerr" "$band_rps" "$band_p99" "$met"
  done
  echo
  echo "Each round (req/s; ratios against that round's nginx):"
  echo
  printf '%s\n' "${rounds_lines[@]}"
}

# Issue 11: the three-upstream project, cold and warm through the merged proxy, against
# Composer going to the three upstreams itself.
report_multi() {
  local kind round all reqs
  declare -A med_of all_of reqs_of
  for kind in direct cold warm; do
    all=()
    reqs=()
    for ((round = 1; round <= ROUNDS; round++)); do
      all+=("${multi_secs[$kind-$round]}")
      reqs+=("${multi_requests[$kind-$round]}")
    done
    med_of[$kind]=$(median "${all[@]}")
    all_of[$kind]="${all[*]}"
    reqs_of[$kind]="${reqs[*]}"
  done
  echo "### Three upstreams behind one URL: \`composer install\`"
  echo
  echo "Project: $PRODUCT $PRODUCT_VERSION from magento (v1, keys), hyva-themes/magento2-default-theme from hyva (p2 under $HYVA_PREFIX, user token), laminas/laminas-stdlib and magento/magento-composer-installer from packagist (open-ended, minified, dists on a second origin); $multi_count packages. Every upstream request (the three mocks and the dist host) delayed ${MULTI_DELAY_MS} ms. Empty Composer cache and vendor directory every time; the lock resolved anew every time. Median of $ROUNDS rounds; odd rounds run direct first, even rounds last."
  echo
  echo "| install | median s | each round s | upstream requests, each round |"
  echo "|---|---:|---|---|"
  echo "| direct to the three upstreams, with credentials (baseline) | ${med_of[direct]} | ${all_of[direct]// / / } | ${reqs_of[direct]// / / } |"
  echo "| through a cold merged proxy (empty cache) | ${med_of[cold]} | ${all_of[cold]// / / } | ${reqs_of[cold]// / / } |"
  echo "| through the warm merged proxy (cache filled by the cold install) | ${med_of[warm]} | ${all_of[warm]// / / } | ${reqs_of[warm]// / / } |"
  echo
  local cold_ratio warm_ratio
  cold_ratio=$(ratio "${med_of[cold]}" "${med_of[direct]}")
  warm_ratio=$(ratio "${med_of[warm]}" "${med_of[direct]}")
  echo "| ratio of medians | value | each round | target | met |"
  echo "|---|---:|---|---|---|"
  echo "| cold proxy ÷ direct | $cold_ratio | $(pairwise_ratios "${all_of[cold]}" "${all_of[direct]}") | ≤ 1.0 | $(meets "$cold_ratio" '<=' 1.0) |"
  echo "| warm proxy ÷ direct | $warm_ratio | $(pairwise_ratios "${all_of[warm]}" "${all_of[direct]}") | ≤ 0.3 | $(meets "$warm_ratio" '<=' 0.3) |"
}

reproduce="BENCH_DURATION_SECS=$DURATION_SECS BENCH_ROUNDS=$ROUNDS BENCH_CONNECTIONS=$CONNECTIONS BENCH_WRK_THREADS=$WRK_THREADS BENCH_MODULES=$MODULES BENCH_DELAY_MS=$DELAY_MS BENCH_MULTI_DELAY_MS=$MULTI_DELAY_MS BENCH_TOOLING_DELAY_MS=$TOOLING_DELAY_MS BENCH_NOISE=$NOISE bench/run.sh"
mkdir -p "$(dirname "$RESULTS")"
report | tee "$RESULTS"
log "results written to $RESULTS"
