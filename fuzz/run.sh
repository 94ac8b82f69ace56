#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each one in turn for a bounded time, then prints per
# target how long it ran, how many inputs it executed and whether it found a crash. Exits
# non-zero when any target crashed (the failing input is kept under fuzz/artifacts/<target>/).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; 0 only builds. Without TARGETs every target runs. The
# corpus grows in fuzz/corpus/<target>/ (ignored by git) from the seeds in fuzz/seeds/<target>/,
# so later runs start where earlier ones stopped. Targets run one after the other on one core:
# the machines this runs on are shared.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
[[ $# -gt 0 ]] && shift
CARGO_FUZZ_VERSION=0.13.2
# Longest a single input may take before libFuzzer reports it as a hang.
INPUT_TIMEOUT_SECS=30

die() { printf 'fuzz/run.sh: %s\n' "$*" >&2; exit 2; }
[[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || die "SECONDS_PER_TARGET must be a whole number, not '$SECONDS_PER_TARGET'"

# cargo-fuzz compiles with flags only nightly compilers accept (-Zsanitizer=address and the
# -Cllvm-args/-Cpasses for libFuzzer's coverage instrumentation). The stable toolchain has the
# same code behind them; RUSTC_BOOTSTRAP=1 unlocks it, so no nightly toolchain is needed. It
# applies to this script's cargo invocations only, never to the proxy's own build.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi

# fuzz/Cargo.lock is committed: fail here, not half-way, if it no longer matches. It is the
# proxy's Cargo.lock plus libfuzzer-sys; after changing the proxy's dependencies, refresh it with
# `cp Cargo.lock fuzz/Cargo.lock && cargo fetch --manifest-path fuzz/Cargo.toml`.
cargo fetch --locked --manifest-path fuzz/Cargo.toml

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo fuzz list)
fi
[[ ${#targets[@]} -gt 0 ]] || die "no fuzz targets found"

build_started=$SECONDS
for target in "${targets[@]}"; do
  cargo fuzz build "$target"
done
echo "built ${targets[*]} in $((SECONDS - build_started)) s"
[[ $SECONDS_PER_TARGET -eq 0 ]] && exit 0

summary=()
failed=0
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  artifacts="fuzz/artifacts/$target"
  log="fuzz/artifacts/$target.log"
  mkdir -p "$corpus" "$artifacts"
  seeds=()
  [[ -d fuzz/seeds/$target ]] && seeds=("fuzz/seeds/$target")
  findings_before=$(find "$artifacts" -type f | wc -l)
  echo "== $target: ${SECONDS_PER_TARGET} s (log: $log)"
  started=$SECONDS
  status=0
  cargo fuzz run "$target" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout="$INPUT_TIMEOUT_SECS" \
    -dict=fuzz/composer.dict -print_final_stats=1 >"$log" 2>&1 || status=$?
  ran=$((SECONDS - started))
  # libFuzzer's final statistics; after a crash, the last status line says how far it got.
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  [[ -n $execs ]] || execs=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
  findings=$(($(find "$artifacts" -type f | wc -l) - findings_before))
  if [[ $status -eq 0 && $findings -eq 0 ]]; then
    verdict="no crash"
  else
    verdict="CRASH (exit $status; see $artifacts and $log)"
    failed=1
    grep -m 1 -A 3 'panicked at' "$log" || tail -n 20 "$log"
  fi
  summary+=("$(printf '%-12s %6s s %12s execs  %s' "$target" "$ran" "${execs:-?}" "$verdict")")
done

echo
echo "== fuzzing summary (${SECONDS_PER_TARGET} s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
