#!/usr/bin/env bash
# System calls per operation in the timed sections of `cargo bench --bench store`, runstate
# beside the floor (issue 19). Linux, as root (or perf_event_paranoid <= 1 and tracefs
# readable); not part of CI.
#
# usage: benches/syscalls.sh [--tool perf|strace] [--flavor multi|ct|both] [--reps N]
#                            [--impls "runstate floor"] [WORKLOAD ...]
#   WORKLOAD: W1 .. W12 (default: W1 W4 W5 W7 W8)
#   --tool perf   (default) `perf stat` on the `syscalls:sys_enter_*` tracepoints, enabled
#                 only inside the timed sections (the bench talks to perf over a control
#                 fifo: RUNSTATE_BENCH_PERF_CTL/ACK). No ptrace: calls run at full speed, so
#                 the scheduler's own calls (epoll_wait, sched_yield, futex) and wakes
#                 (sched:sched_wakeup) count as they happen in a normal run. Every call of
#                 every thread of the bench process is counted, including the blocking pool's.
#   --tool strace `strace -f`, cut to the timed sections by the bench's marker calls
#                 (RUNSTATE_BENCH_MARK). Exact for the deterministic calls (openat, write,
#                 linkat, flock, fstat, close, getdents64, unlinkat), but every traced call
#                 is slowed about tenfold, so the 30 us poll budget runs out on nearly every
#                 operation: epoll_wait, sched_yield and futex are inflated. Use perf for those.
#   --flavor      the runtime runstate runs on: multi (2 workers), ct (current-thread), or
#                 both (default). The floor has no runtime and runs once.
#   --reps N      repetitions of each workload (default 3); figures are totals over the
#                 timed sections divided by the operations in them.
# Prints, per workload, calls per operation by name (calls below 0.0005 per operation are
# left out), their total, and for perf: context switches, CPU migrations and wakes
# (sched_wakeup events raised by the bench's threads) per operation.
# Environment: RUNSTATE_BENCH_DIR as for the bench (a tmpfs; /dev/shm by default);
# RUNSTATE_BENCH_BIN=path runs that bench binary instead of building one (a copy, so that
# builds meanwhile do not change it); RUNSTATE_BENCH_SPAWN=1 passes through to the bench.
set -euo pipefail

tool=perf
flavor=both
reps=3
impls="runstate floor"
workloads=()
while [ $# -gt 0 ]; do
    case "$1" in
        --tool) tool=$2; shift 2 ;;
        --flavor) flavor=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --impls) impls=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        W*|w*) workloads+=("${1^^}"); shift ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#workloads[@]} -gt 0 ] || workloads=(W1 W4 W5 W7 W8)
case "$tool" in perf|strace) ;; *) echo "--tool perf or strace" >&2; exit 2 ;; esac
case "$flavor" in both) flavors="multi ct" ;; multi|ct) flavors=$flavor ;;
    *) echo "--flavor multi, ct or both" >&2; exit 2 ;; esac
command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 2; }

cd "$(dirname "$0")/.."
bin=${RUNSTATE_BENCH_BIN:-}
[ -n "$bin" ] || bin=$(cargo bench --bench store --no-run 2>&1 | tee /dev/stderr |
    sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "could not find the bench binary" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Runs the bench for one workload, implementation and runtime under the tool; writes
# "name calls-per-op" lines to $out.
count() {
    local w=$1 impl=$2 fl=$3 out=$4
    local env=(RUNSTATE_BENCH_ONLY="$w" RUNSTATE_BENCH_IMPL="$impl" RUNSTATE_BENCH_FLAVOR="$fl"
        RUNSTATE_BENCH_REPS="$reps" RUNSTATE_BENCH_QUICK=1)
    local log=$tmp/stderr ops
    if [ "$tool" = perf ]; then
        rm -f "$tmp/ctl" "$tmp/ack"
        mkfifo "$tmp/ctl" "$tmp/ack"
        perf stat -x, -o "$tmp/perf.csv" -D -1 --control "fifo:$tmp/ctl,$tmp/ack" \
            -e 'syscalls:sys_enter_*' -e context-switches,cpu-migrations,sched:sched_wakeup \
            -- env "${env[@]}" RUNSTATE_BENCH_PERF_CTL="$tmp/ctl" RUNSTATE_BENCH_PERF_ACK="$tmp/ack" \
            "$bin" >/dev/null 2>"$log"
    else
        strace -f -qq -o "$tmp/strace.log" env "${env[@]}" RUNSTATE_BENCH_MARK=1 "$bin" \
            >/dev/null 2>"$log"
    fi
    ops=$(awk -v impl="$impl" '$1 == "timed:" && $3 == impl { n += $4 } END { print n + 0 }' "$log")
    if [ "$ops" -eq 0 ]; then
        echo "no timed section for $w $impl $fl; the bench said:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    if [ "$tool" = perf ]; then
        # "count,unit,event,..."; the control fifo's own write and read (one each per
        # section) are left in: under 0.001 per operation.
        awk -F, -v ops="$ops" '$1 ~ /^[0-9]+$/ && $1 > 0 {
                name = $3; sub(/^syscalls:sys_enter_/, "", name); sub(/^sched:/, "", name)
                printf "%s %.6f\n", name, $1 / ops }' "$tmp/perf.csv" >"$out"
    else
        awk -v ops="$ops" '
            /runstate-bench-mark\/start/ { on = 1; next }
            /runstate-bench-mark\/end/ { on = 0; next }
            on && !/resumed>/ && !/^[0-9]+ +(\+\+\+|---)/ {
                if (match($0, /^[0-9]+ +[a-z_0-9]+\(/)) {
                    s = substr($0, RSTART, RLENGTH - 1); sub(/^[0-9]+ +/, "", s); n[s]++
                }
            }
            END { for (s in n) printf "%s %.6f\n", s, n[s] / ops }' "$tmp/strace.log" >"$out"
    fi
}

echo "system calls per operation, counted with $tool over the timed sections ($reps reps;"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); $(uname -r))"
for w in "${workloads[@]}"; do
    cols=()
    for impl in $impls; do
        if [ "$impl" = floor ]; then
            count "$w" floor "${flavors%% *}" "$tmp/$w.floor"
            cols+=("floor")
        else
            for fl in $flavors; do
                count "$w" "$impl" "$fl" "$tmp/$w.$impl-$fl"
                cols+=("$impl-$fl")
            done
        fi
    done
    echo
    echo "$w"
    (cd "$tmp" && awk -v cols="${cols[*]}" -v w="$w" '
        BEGIN { nc = split(cols, c, " ") }
        { split(FILENAME, f, "."); v[$1, f[2]] = $2; names[$1] = 1 }
        END {
            printf "%-22s", "per op"; for (i = 1; i <= nc; i++) printf " %16s", c[i]; print ""
            other["context-switches"] = other["cpu-migrations"] = other["sched_wakeup"] = 1
            n = 0; for (s in names) if (!(s in other)) list[++n] = s
            # Sorted by name, for tables that diff well.
            for (i = 2; i <= n; i++) { x = list[i]; for (j = i - 1; j >= 1 && list[j] > x; j--) list[j + 1] = list[j]; list[j + 1] = x }
            for (k = 1; k <= n; k++) {
                s = list[k]; show = 0
                for (i = 1; i <= nc; i++) if (v[s, c[i]] >= 0.0005) show = 1
                if (!show) continue
                printf "%-22s", s
                for (i = 1; i <= nc; i++) { printf " %16.3f", v[s, c[i]]; tot[i] += v[s, c[i]] }
                print ""
            }
            printf "%-22s", "total calls"; for (i = 1; i <= nc; i++) printf " %16.3f", tot[i]; print ""
            for (s in other) {
                any = 0; for (i = 1; i <= nc; i++) if ((s, c[i]) in v) any = 1
                if (!any) continue
                printf "%-22s", s; for (i = 1; i <= nc; i++) printf " %16.3f", v[s, c[i]]; print ""
            }
        }' "$w".*)
done
