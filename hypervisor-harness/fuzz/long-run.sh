#!/bin/bash
# The long fuzz run the reliability issue asks for: every target (or the ones named) for RUNS
# libFuzzer executions each (default ten million), from a copy of its seed corpus, JOBS at a
# time, and a table of what each did (README, "Fuzzing"). Needs cargo-fuzz and a C++ compiler.
#
#   hypervisor-harness/fuzz/long-run.sh                  # all targets, 10,000,000 runs each
#   RUNS=100000 hypervisor-harness/fuzz/long-run.sh ide  # one target, a short run
#   MAX_TIME=900 hypervisor-harness/fuzz/long-run.sh     # each stops at RUNS or 15 min
#
# Built `-O -a -s none`: optimized, with debug assertions and overflow checks on (a wrapped
# guest-controlled length panics), without ASan, which costs 3x the executions and watches
# only the heap and the stack, not guest memory (anonymous mmaps). FUZZ_SANITIZER=address
# builds with it instead. A crash, a panic or an input past the time limit (TIMEOUT seconds: a
# hang) stops that target's run, leaves the input in OUT/artifacts/ and fails the script.
# virtio_blk_async's O_DIRECT images go to /dev/shm when it exists (TMPDIR): the same io_uring
# path, at five times ext4's rate here.
set -eu
cd "$(dirname "$0")/.."
RUNS="${RUNS:-10000000}"
JOBS="${JOBS:-2}"
TIMEOUT="${TIMEOUT:-10}"
MAX_TIME="${MAX_TIME:-0}"
OUT="$(realpath -m "${OUT:-../target/fuzz-long}")"
SAN="${FUZZ_SANITIZER:-none}"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -O -a -s "$SAN"
BIN="$(realpath "${CARGO_TARGET_DIR:-fuzz/target}")/x86_64-unknown-linux-gnu/release"
mkdir -p "$OUT/artifacts"

run_one() {
    t="$1"
    rm -rf "$OUT/corpus/$t"
    mkdir -p "$OUT/corpus/$t"
    cp fuzz/corpus/"$t"/* "$OUT/corpus/$t/" 2>/dev/null || true
    tmp="${TMPDIR:-/tmp}"
    if [ "$t" = virtio_blk_async ] && [ -w /dev/shm ]; then tmp=/dev/shm; fi
    start=$(date +%s)
    set +e
    TMPDIR="$tmp" "$BIN/$t" -runs="$RUNS" -max_total_time="$MAX_TIME" -timeout="$TIMEOUT" \
        -print_final_stats=1 \
        -artifact_prefix="$OUT/artifacts/$t-" "$OUT/corpus/$t" >"$OUT/$t.log" 2>&1
    rc=$?
    set -e
    secs=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/$t.log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$OUT/$t.log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$OUT/$t.log" | tail -1 | cut -d' ' -f2)
    units=$(find "$OUT/corpus/$t" -type f | wc -l)
    if [ "$rc" -ne 0 ]; then
        result="FAILED (exit $rc, see $OUT/$t.log)"
    elif [ "${execs:-0}" -lt "$RUNS" ]; then
        result="no crash; stopped at MAX_TIME"
    else
        result="no crash"
    fi
    printf '| `%s` | %s | %s | %s | %s | %s | %s |\n' \
        "$t" "${execs:-?}" "$secs" "${cov:-?}" "${ft:-?}" "$units" "$result" >"$OUT/$t.row"
    cat "$OUT/$t.row"
}
export -f run_one
export OUT RUNS TIMEOUT MAX_TIME BIN

echo "long run: $RUNS runs per target (time cap ${MAX_TIME}s, 0: none), $JOBS at a time, -s $SAN, $(git rev-parse --short HEAD)"
printf '%s\n' "${targets[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one "$@"' _ {}
{
    echo '| target | executions | seconds | coverage (`cov`) | features (`ft`) | corpus | result |'
    echo '|---|---|---|---|---|---|---|'
    for t in "${targets[@]}"; do cat "$OUT/$t.row"; done
} >"$OUT/table.md"
cat "$OUT/table.md"
! grep -q FAILED "$OUT/table.md"
