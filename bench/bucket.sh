# shellcheck shell=bash
# shellcheck disable=SC2154 # the settings and helpers come from bench/run.sh, which sources this
# Scenario 5 of bench/run.sh, issue 14 ("Replicas that share object storage", Done means 2):
# warm archive throughput of a proxy whose archives live in a bucket (moto's S3 server, from
# PyPI) behind its local tier, against a proxy with a local directory only. Both in front of
# the same fast mock, both warm (the archive in the local tier and, for the first, in the
# bucket too); wrk on the 100 KB and the 5 MB archive, the two proxies taking turns each
# round, medians over ROUNDS. A warm hit should never touch the bucket, so the ratio shows
# what the bucket costs on the hot path: nothing, within noise, is the target.
# BENCH_ONLY=bucket runs only this one.

readonly BUCKET_NAME=composer
readonly MOTO_INSTALL="pip install 'moto[server]==5.2.5'"
# Serves on a free port with the bucket created, writes the port to argv[1], then serves
# until killed.
readonly MOTO_SCRIPT='
import sys, time
import boto3
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
port = server.get_host_and_port()[1]
boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="bench",
             aws_secret_access_key="bench", region_name="us-east-1").create_bucket(Bucket=sys.argv[2])
open(sys.argv[1], "w").write(str(port))
while True:
    time.sleep(3600)
'

declare -A bucket_result bucket_sizes

# Starts moto; sets moto_endpoint.
start_moto() {
  python3 -c 'import moto.server, boto3' 2>/dev/null || die "moto is needed: $MOTO_INSTALL"
  python3 -c "$MOTO_SCRIPT" "$work/moto.port" "$BUCKET_NAME" >"$work/moto.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_until test -s "$work/moto.port" || die "moto did not start; see $work/moto.log"
  moto_endpoint=http://127.0.0.1:$(<"$work/moto.port")
  log "moto: $moto_endpoint (pid $pid)"
}

# Requests $1 until the proxy answers it from its cache (X-Cache: HIT); writes the body to $2.
warm_object() {
  local url=$1 out=$2 status
  for _ in 1 2 3 4 5; do
    status=$(curl -fsS -o "$out" -D - "$url" |
      tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache" { print $2 }')
    [[ $status != HIT ]] || return 0
  done
  die "$url is not served from the proxy's cache after 5 requests"
}

# The proxy-relative dist path the proxy at $1 serves for the mock's package $2.
bucket_dist_path() {
  local url
  url=$(curl -fsS "$1/p2/$2.json" | jq -er --arg p "$2" '.packages[$p][0].dist.url')
  echo "${url#"$1"}"
}

# Whether the proxy at $1 has stored both archives in the bucket.
bucket_uploaded() {
  [[ $(curl -fsS "$1/metrics" |
    awk '$1 == "composer_proxy_bucket_uploads_total{outcome=\"created\"}" { print $2 }') == 2 ]]
}

run_bucket_scenario() {
  start_moto
  start_mock bucket-mock --archive-bytes "$SMALL_ARCHIVE_BYTES" --archive-bytes "$LARGE_ARCHIVE_BYTES"
  local upstream=$mock_url
  launch_proxy proxy-bucket "$work/cache-bucket" \
    COMPOSER_PROXY_UPSTREAM_URL="$upstream" \
    COMPOSER_PROXY_PUBLIC_KEY="$PUBLIC_KEY" \
    COMPOSER_PROXY_PRIVATE_KEY="$PRIVATE_KEY" \
    COMPOSER_PROXY_OBJECT_STORE_URL="s3://$BUCKET_NAME/bench" \
    AWS_ENDPOINT_URL="$moto_endpoint" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
  local bucket_url=$proxy_url
  start_proxy proxy-local "$upstream" "$work/cache-local"
  local local_url=$proxy_url
  declare -A url_of=([bucket]=$bucket_url [local]=$local_url)

  local name server path round
  declare -A bucket_paths
  for name in archive-100k archive-5m; do
    local bytes=$SMALL_ARCHIVE_BYTES
    [[ $name == archive-100k ]] || bytes=$LARGE_ARCHIVE_BYTES
    path=$(bucket_dist_path "$bucket_url" "bench/blob-$bytes")
    [[ $path == /* ]] || die "no proxy path for $name: '$path'"
    bucket_paths[$name]=$path
    for server in bucket local; do
      warm_object "${url_of[$server]}$path" "$work/$name-$server.bin"
    done
    cmp -s "$work/$name-bucket.bin" "$work/$name-local.bin" ||
      die "the two proxies serve different bytes for $path"
    bucket_sizes[$name]=$(stat -c %s "$work/$name-bucket.bin")
  done
  # Uploads run after clients are served: wait for both, so none overlaps the measurements.
  wait_until bucket_uploaded "$bucket_url" || die "the bucket proxy did not store both archives in the bucket"

  for ((round = 1; round <= ROUNDS; round++)); do
    for name in archive-100k archive-5m; do
      for server in bucket local; do
        log "round $round/$ROUNDS, wrk ${DURATION_SECS}s: $name via the $server proxy"
        # Read by summarise (bench/run.sh) through a nameref, which shellcheck cannot follow.
        # shellcheck disable=SC2034
        bucket_result[$name-$server-$round]=$(measure "bucket-$name-$server-$round" \
          "${url_of[$server]}${bucket_paths[$name]}")
      done
    done
  done
}

report_bucket() {
  echo "### Archives in a bucket: warm throughput, bucket + local tier against a local directory only"
  echo
  echo "Proxy A keeps archives in moto's S3 server behind its local tier (object_store_url); proxy B has a local directory only. Both warm; wrk -c$CONNECTIONS -t$WRK_THREADS -d${DURATION_SECS}s, medians of $ROUNDS rounds, the two taking turns."
  echo
  echo "| archive | bytes | A (bucket) req/s | B (local) req/s | A ÷ B | each round | A p99 ms | B p99 ms | errors |"
  echo "|---|---:|---:|---:|---:|---|---:|---:|---:|"
  local name server errors all
  for name in archive-100k archive-5m; do
    declare -A med_rps med_p99 each
    local total_errors=0
    for server in bucket local; do
      read -r "med_rps[$server]" "med_p99[$server]" errors all \
        <<<"$(summarise "$name" "$server" bucket_result)"
      each[$server]=${all//\// }
      total_errors=$((total_errors + errors))
    done
    echo "| $name | ${bucket_sizes[$name]} | ${med_rps[bucket]} | ${med_rps[local]} | $(ratio "${med_rps[bucket]}" "${med_rps[local]}") | $(pairwise_ratios "${each[bucket]}" "${each[local]}") | ${med_p99[bucket]} | ${med_p99[local]} | $total_errors |"
  done
}

# The report of a BENCH_ONLY=bucket run.
report_bucket_only() {
  echo "## composer-proxy benchmark: archives in a bucket only"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), built from commit $build_commit, $(nproc) CPUs, moto $(python3 -c 'import moto; print(moto.__version__)'). 1-minute load average before: $load_before; at the end: $(cut -d' ' -f1 /proc/loadavg)."
  echo
  echo "Reproduce: \`BENCH_ONLY=bucket BENCH_ROUNDS=$ROUNDS BENCH_DURATION_SECS=$DURATION_SECS bench/run.sh\`"
  echo
  report_bucket
}
