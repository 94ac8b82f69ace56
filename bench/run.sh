#!/usr/bin/env bash
# Benchmark for issue 3 ("Done means" 2): composer-proxy against nginx serving the same
# bytes from disk, and a cold `composer install` through the proxy against Composer going
# straight to a slow upstream. One run measures everything and prints a markdown table
# (also written to $BENCH_RESULTS, default bench/results.md).
#
# Everything runs on loopback: the upstream is the tests' mock of repo.magento.com
# (examples/mock_upstream.rs), started as a process. Ports come from the kernel
# (127.0.0.1:0) for our own programs; nginx cannot bind port 0, so it gets a random free
# port, retried if taken. Every wait is bounded, every process started here is stopped on
# exit, and all files live in one temporary directory that is removed afterwards
# (BENCH_KEEP=1 keeps it for inspection).
#
# Settings (environment): BENCH_DURATION_SECS (per wrk run, default 10), BENCH_ROUNDS (3),
# BENCH_CONNECTIONS (64), BENCH_WRK_THREADS (2), BENCH_MODULES (100),
# BENCH_DELAY_MS (300), BENCH_RESULTS, BENCH_KEEP. Cargo honours CARGO_TARGET_DIR as usual.
#
# Needs: cargo, nginx, wrk, composer (with php-zip, php-curl, php-mbstring), curl, jq,
# ss. Missing Debian packages are installed with apt-get.

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
readonly SMALL_ARCHIVE_BYTES=$((100 * 1024))
readonly LARGE_ARCHIVE_BYTES=$((5 * 1024 * 1024))
# The key pair the mock accepts (tests/support/mock_upstream.rs TEST_PUBLIC_KEY/PRIVATE_KEY).
readonly PUBLIC_KEY=0123456789abcdef0123456789abcdef
readonly PRIVATE_KEY=fedcba9876543210fedcba9876543210
readonly PRODUCT=magento/product-community-edition
readonly PRODUCT_VERSION=2.4.7
# Upper bounds, so a hung component fails the run instead of stalling it.
readonly START_TIMEOUT_SECS=30
readonly COMPOSER_TIMEOUT_SECS=600
# Safety net for the mocks if this script is killed with SIGKILL and cannot clean up.
readonly MOCK_MAX_SECS=1800

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
readonly RESULTS=${BENCH_RESULTS:-$repo_root/bench/results.md}

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

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

# Starts the mock upstream; sets mock_url and mock_pid.
start_mock() {
  local name=$1
  shift
  local url_file=$work/$name.url
  "$bin/mock_upstream" --modules "$MODULES" --url-file "$url_file" \
    --max-secs "$MOCK_MAX_SECS" "$@" >"$work/$name.log" 2>&1 &
  mock_pid=$!
  pids+=("$mock_pid")
  wait_until test -s "$url_file" || die "$name did not start; see $work/$name.log"
  mock_url=$(<"$url_file")
  log "$name: $mock_url (pid $mock_pid)"
}

# Starts the release proxy in front of $1 with its cache in $2; sets proxy_url and
# proxy_pid. The environment is cleared so nothing from the caller's COMPOSER_PROXY_* or
# COMPOSER_AUTH leaks in.
start_proxy() {
  local name=$1 upstream=$2 cache=$3
  local log_file=$work/$name.log
  mkdir -p "$cache"
  # JSON logs, so the bound address can be read reliably from the start-up line.
  # A long metadata TTL keeps background revalidation out of the measurements (nginx
  # does none either); a short grace lets the run end promptly.
  env -i PATH="$PATH" \
    COMPOSER_PROXY_LISTEN=127.0.0.1:0 \
    COMPOSER_PROXY_UPSTREAM_URL="$upstream" \
    COMPOSER_PROXY_PUBLIC_KEY="$PUBLIC_KEY" \
    COMPOSER_PROXY_PRIVATE_KEY="$PRIVATE_KEY" \
    COMPOSER_PROXY_CACHE_DIR="$cache" \
    COMPOSER_PROXY_LOG_FORMAT=json \
    COMPOSER_PROXY_METADATA_TTL_SECS=86400 \
    COMPOSER_PROXY_SHUTDOWN_GRACE_SECS=2 \
    "$bin/composer-proxy" >"$log_file" 2>&1 &
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

# Starts nginx (master in the foreground, as our child) serving $1; sets nginx_url and
# nginx_pid.
start_nginx() {
  local root=$1
  local dir=$work/nginx
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
        log "nginx: $nginx_url (pid $nginx_pid, attempt $attempt)"
        return 0
      fi
      sleep 0.1
      tries=$((tries - 1))
    done
    kill -TERM "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  done
  die "nginx did not start; see $dir/error.log"
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

# Runs wrk against $2 and prints "rps p99_ms errors"; $1 names the output file.
measure() {
  local name=$1 url=$2
  local out=$work/wrk-$name.txt
  # A short unrecorded run first: connections, page cache and allocator warm for both.
  wrk -c"$CONNECTIONS" -t"$WRK_THREADS" -d1s "$url" >/dev/null
  wrk -c"$CONNECTIONS" -t"$WRK_THREADS" -d"${DURATION_SECS}s" --timeout 10s --latency "$url" >"$out"
  local rps p99 non2xx socket_errors
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  p99=$(awk '$1 == "99%" { print $2 }' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
  socket_errors=$(awk -F'[ ,]+' '/Socket errors:/ {
    for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; print s }' "$out")
  [[ -n $rps && -n $p99 ]] || die "could not parse wrk output $out"
  printf '%s %s %s\n' "$rps" "$(to_ms "$p99")" "$((${non2xx:-0} + ${socket_errors:-0}))"
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

# Runs `composer install` in the project under $1 with a hermetic environment and prints
# its wall-clock time in seconds.
timed_install() {
  local dir=$1
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
  [[ -f $dir/project/vendor/magento/framework/composer.json ]] ||
    die "composer install in $dir did not install magento/framework"
  awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.2f", b - a }'
}

# Median of the arguments (numbers).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# For object $1 and server $2: "median_rps median_p99_ms total_errors all_rps".
summarise() {
  local name=$1 server=$2 round rps p99 errors
  local all_rps=() all_p99=() total_errors=0
  for ((round = 1; round <= ROUNDS; round++)); do
    read -r rps p99 errors <<<"${result[$name-$server-$round]}"
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

# --- Run -------------------------------------------------------------------------------

ensure_tools

log "building (release)"
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

# 1. Warm proxy against nginx.
start_mock mock-fast --archive-bytes "$SMALL_ARCHIVE_BYTES" --archive-bytes "$LARGE_ARCHIVE_BYTES"
start_proxy proxy-warm "$mock_url" "$work/cache-warm"
warm_pid=$proxy_pid
warm_url=$proxy_url

# Proxy-relative paths of the four objects; archive URLs come from the proxy's own
# rewritten metadata.
dist_path() {
  local package=$1 url
  url=$(curl -fsS "$warm_url/p2/$package.json" |
    jq -er --arg p "$package" '.packages[$p][0].dist.url')
  echo "${url#"$warm_url"}"
}
names=(packages.json p2-framework archive-100k archive-5m)
declare -A paths=(
  [packages.json]=/packages.json
  [p2-framework]=/p2/magento/framework.json
  [archive-100k]=$(dist_path "bench/blob-$SMALL_ARCHIVE_BYTES")
  [archive-5m]=$(dist_path "bench/blob-$LARGE_ARCHIVE_BYTES")
)

# The proxy's packages.json gains the Composer 1 provider chain once that is built in the
# background after the first upstream listing; measure the final form, the one a warm
# proxy serves.
curl -fsS -o /dev/null "$warm_url/packages.json"
composer1_ready() {
  [[ $(curl -fsS "$warm_url/readyz" | jq -r .composer1) == true ]]
}
wait_until composer1_ready || die "the proxy's Composer 1 chain was not ready in time"

# Fetch every object until the proxy answers from its cache (the first archive request
# streams from upstream and stores; the next one must be a hit), and put the same bytes
# into nginx's document root under the same paths.
www=$work/www
declare -A sizes
for name in "${names[@]}"; do
  path=${paths[$name]}
  [[ $path == /* ]] || die "no proxy path for $name: '$path'"
  mkdir -p "$www$(dirname "$path")"
  hit=""
  for _ in 1 2 3 4 5; do
    cache_status=$(curl -fsS -o "$www$path" -D - "$warm_url$path" |
      tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache" { print $2 }')
    if [[ $cache_status == HIT ]]; then
      hit=yes
      break
    fi
  done
  [[ -n $hit ]] || die "$path is not served from the proxy's cache after 5 requests"
  sizes[$name]=$(stat -c %s "$www$path")
  log "warm: $path (${sizes[$name]} bytes, X-Cache: HIT)"
done

start_nginx "$www"
for name in "${names[@]}"; do
  path=${paths[$name]}
  proxy_sum=$(curl -fsS "$warm_url$path" | sha256sum)
  nginx_sum=$(curl -fsS "$nginx_url$path" | sha256sum)
  [[ $proxy_sum == "$nginx_sum" ]] || die "nginx and the proxy serve different bytes for $path"
done

declare -A result
for ((round = 1; round <= ROUNDS; round++)); do
  for name in "${names[@]}"; do
    path=${paths[$name]}
    log "round $round/$ROUNDS, wrk ${DURATION_SECS}s: $name via proxy, then nginx"
    result[$name-proxy-$round]=$(measure "$name-proxy-$round" "$warm_url$path")
    result[$name-nginx-$round]=$(measure "$name-nginx-$round" "$nginx_url$path")
  done
done
warm_rss_kib=$(peak_rss_kib "$warm_pid")

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

# --- Report ----------------------------------------------------------------------------

report() {
  local commit
  commit=$(git -C "$repo_root" describe --always --dirty 2>/dev/null || echo unknown)
  echo "## composer-proxy benchmark"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit, $(nproc) CPUs, $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(composer --version 2>/dev/null | awk '{print $1, $3}')."
  echo "wrk -c$CONNECTIONS -t$WRK_THREADS -d${DURATION_SECS}s --latency, keep-alive, identity encoding;"
  echo "median of $ROUNDS rounds (proxy and nginx alternating); wrk shares the CPUs with the"
  echo "server in both cases. Catalogue: $MODULES modules. 1-minute load average before the"
  echo "measurements (other work on the machine): $load_before."
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
      "$name" "${paths[$name]}" "${sizes[$name]}" "$prps" "$nrps" "$rps_ratio" \
      "$pp99" "$np99" "$p99_ratio" "$perr" "$nerr" "$target" "$met"
  done
  echo
  echo "req/s of each round:"
  echo
  printf '%s\n' "${rounds_lines[@]}"
  local large_mbps
  read -r prps _ <<<"$(summarise archive-5m proxy)"
  read -r nrps _ <<<"$(summarise archive-5m nginx)"
  large_mbps=$(awk -v p="$prps" -v n="$nrps" -v s="${sizes[archive-5m]}" \
    'BEGIN { printf "proxy %.0f MB/s, nginx %.0f MB/s", p * s / 1e6, n * s / 1e6 }')
  echo
  echo "5 MB archive throughput: $large_mbps."
  echo
  local install_ratio
  install_ratio=$(ratio "$proxied_secs" "$direct_secs")
  echo "| cold \`composer install\` ($PRODUCT $PRODUCT_VERSION, $proxied_count packages, upstream delay ${DELAY_MS} ms/request, empty Composer cache) | seconds |"
  echo "|---|---:|"
  echo "| direct to the upstream | $direct_secs |"
  echo "| through a cold proxy | $proxied_secs |"
  echo "| ratio proxy/direct (target ≤ 0.25) | $install_ratio $(meets "$install_ratio" '<=' 0.25) |"
  echo
  echo "Proxy peak RSS (VmHWM): $((warm_rss_kib / 1024)) MiB after the wrk runs; $((cold_rss_kib / 1024)) MiB after the cold install."
}

mkdir -p "$(dirname "$RESULTS")"
report | tee "$RESULTS"
log "results written to $RESULTS"
