#!/usr/bin/env bash
# Runs the fuzz targets one after another, one libFuzzer process at a time.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); TARGETs default to every target `cargo fuzz list`
# knows. Each target runs on its corpus, fuzz/corpus/<target>/ (kept in git; an empty one
# is first filled from fuzz/seeds/<target>/), with the seeds as a second, read-only
# corpus; at the end the corpus is minimized (-merge=1 into a fresh directory that then
# replaces it; should that still be over 2 MB, -set_cover_merge=1 minimizes it further).
# Crashes, timeouts and OOMs go to fuzz/artifacts/<target>/, libFuzzer's
# output to fuzz/logs/<target>.log (both ignored by git). Prints per target the
# executions, the final coverage (`cov:` edges and `ft:` features of libFuzzer's last
# stats line) and whether it crashed; exits 1 if any did, 2 if the build failed.
#
# Built like `cargo fuzz build -O -a -s none`: optimized, with debug assertions and
# overflow checks, without AddressSanitizer (the crates forbid unsafe code, so ASan would
# only halve the speed). Stable Rust works: RUSTC_BOOTSTRAP=1 is set here.
set -u -o pipefail
cd "$(dirname "$0")"

secs=${1:-60}
[ $# -gt 0 ] && shift
export RUSTC_BOOTSTRAP=1

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "building ${#targets[@]} target(s)..." >&2
cargo fuzz build -O -a -s none >&2 || exit 2
triple=$(rustc -vV | sed -n 's/^host: //p')
bin=target/$triple/release

mkdir -p logs artifacts corpus
rows=()
failed=0
for t in "${targets[@]}"; do
    if [ ! -x "$bin/$t" ]; then
        echo "no such target: $t" >&2
        rows+=("$t|-|-|-|-|-|-|-|-|no such target")
        failed=1
        continue
    fi
    corpus=corpus/$t
    seeds=seeds/$t
    mkdir -p "$corpus" "artifacts/$t"
    [ -d "$seeds" ] || seeds=
    if [ -n "$seeds" ] && [ -z "$(ls -A "$corpus")" ]; then
        cp "$seeds"/* "$corpus"/
    fi
    log=logs/$t.log
    before=$(ls "artifacts/$t" | wc -l)
    echo "fuzzing $t for ${secs}s..." >&2
    # The `time` keyword gives the CPU seconds the target really had: on a shared machine
    # (or with several run.sh side by side) that is less than its wall-clock SECONDS.
    cpu=$( { TIMEFORMAT='%U %S'; time "$bin/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" "$corpus" ${seeds:+"$seeds"} \
        >"$log" 2>&1; echo "rc=$?" >"$log.rc"; } 2>&1 )
    rc=$(sed -n 's/^rc=//p' "$log.rc"); rm -f "$log.rc"
    cpu=$(awk '{printf "%d", $1 + $2}' <<<"$cpu")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    last=$(grep -E '(cov|ft): [0-9]+' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
    new=$(ls -t "artifacts/$t" | head -n $(( $(ls "artifacts/$t" | wc -l) - before )))
    if [ $rc -eq 0 ]; then
        result=ok
    else
        failed=1
        result="CRASH rc=$rc: ${new:-see $log}"
        result=${result//$'\n'/ }
    fi
    # Minimize: keep only what adds coverage, in a fresh directory.
    fresh=$(mktemp -d corpus/.merge-XXXXXX)
    if "$bin/$t" -merge=1 -artifact_prefix="artifacts/$t/merge-" -timeout=10 -rss_limit_mb=2048 "$fresh" "$corpus" >"logs/$t.merge.log" 2>&1; then
        rm -rf "$corpus"
        mv "$fresh" "$corpus"
    else
        echo "merge failed for $t (see logs/$t.merge.log); corpus kept as is" >&2
        rm -rf "$fresh"
    fi
    size=$(( $(du -sb "$corpus" | cut -f1) / 1024 ))
    if [ "$size" -gt 2048 ]; then
        # Still over 2 MB: the greedy set cover keeps fewer inputs for the same features.
        fresh=$(mktemp -d corpus/.merge-XXXXXX)
        if "$bin/$t" -set_cover_merge=1 -artifact_prefix="artifacts/$t/merge-" -timeout=10 -rss_limit_mb=2048 "$fresh" "$corpus" >>"logs/$t.merge.log" 2>&1; then
            rm -rf "$corpus"
            mv "$fresh" "$corpus"
        else
            rm -rf "$fresh"
        fi
        size=$(( $(du -sb "$corpus" | cut -f1) / 1024 ))
        [ "$size" -gt 2048 ] && echo "warning: corpus/$t is ${size} KB (over 2 MB)" >&2
    fi
    files=$(ls "$corpus" | wc -l)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    [ -n "$rate" ] || rate=$(grep -oE 'exec/s: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+')
    rows+=("$t|$secs|${cpu:-?}|${execs:-?}|${rate:-?}|${cov:-?}|${ft:-?}|$files|${size}K|$result")
done

printf '\n| %-26s | %5s | %7s | %10s | %7s | %5s | %6s | %6s | %7s | %s\n' target secs cpu-s execs exec/s cov ft corpus size result
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s\n' ---------------------------- ------- --------- ------------ --------- ------- -------- -------- --------- ------
for r in "${rows[@]}"; do
    IFS='|' read -r a b c d e f g h i j <<<"$r"
    printf '| %-26s | %5s | %7s | %10s | %7s | %5s | %6s | %6s | %7s | %s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j"
done
exit $failed
