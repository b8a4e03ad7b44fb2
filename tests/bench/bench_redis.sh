#!/usr/bin/env bash
# bench_redis.sh: redis-benchmark against ringline scripts/redis.lua and
# redis-server 7, one request per round trip (-P 1) and 16 pipelined (-P 16).
#
# Pinned runs: the server on one core (ringline --workers 1, redis-server),
# redis-benchmark on another, the two servers alternating in the same run.
# Then ringline --workers 2 unpinned (it then shares cores with the client).
#
# Usage: bash tests/bench/bench_redis.sh BUILD_DIR
# Needs: redis-server and redis-tools (redis-benchmark), taskset (util-linux).
# Environment (all optional):
#   BENCH_REQUESTS=400000   redis-benchmark -n
#   BENCH_CONNECTIONS=50    redis-benchmark -c
#   BENCH_TESTS=set,get     redis-benchmark -t
#   BENCH_DEPTHS="1 16"     redis-benchmark -P values
#   BENCH_VALUE_SIZE=3      redis-benchmark -d (value bytes of SET/GET)
#   BENCH_REPEAT=1          runs per server and depth; the best req/s is kept
#   BENCH_SERVER_CPU=0 BENCH_CLIENT_CPU=1
#   BENCH_WORKERS2=1        0: skip the ringline --workers 2 runs
#   RINGLINE=BUILD_DIR/ringline   RINGLINE_ARGS=""   extra ringline options
# Targets (printed, never fatal): one worker >= 1.0x redis-server at -P 1
# and >= 1.2x at -P 16.
set -euo pipefail

BENCH_NAME=bench_redis
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_args "$@"

REQUESTS=${BENCH_REQUESTS:-400000}
CONNS=${BENCH_CONNECTIONS:-50}
TESTS=${BENCH_TESTS:-set,get}
VALUE_SIZE=${BENCH_VALUE_SIZE:-3}
read -ra DEPTHS <<<"${BENCH_DEPTHS:-1 16}"
REPEAT=${BENCH_REPEAT:-1}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
WORKERS2=${BENCH_WORKERS2:-1}
RINGLINE=${RINGLINE:-$BUILD/ringline}
read -ra RL_EXTRA <<<"${RINGLINE_ARGS:-}"

is_int "$REQUESTS" || die "BENCH_REQUESTS must be a positive integer"
is_int "$CONNS" || die "BENCH_CONNECTIONS must be a positive integer"
is_int "$REPEAT" || die "BENCH_REPEAT must be a positive integer"
is_int "$VALUE_SIZE" || die "BENCH_VALUE_SIZE must be a positive integer"
for d in "${DEPTHS[@]}"; do is_int "$d" || die "bad depth '$d' in BENCH_DEPTHS"; done
check_cores "$SERVER_CPU" "$CLIENT_CPU" "server and client"
command -v taskset >/dev/null || die "taskset not found: apt-get install util-linux"
command -v redis-benchmark >/dev/null || die "redis-benchmark not found: apt-get install redis-tools"
command -v redis-server >/dev/null || die "redis-server not found: apt-get install redis-server"
[[ -x $RINGLINE ]] || die "missing $RINGLINE (run make first)"
[[ -f scripts/redis.lua ]] || die "missing $REPO/scripts/redis.lua"

SRV_PID=""

stop_server() {
    [[ -n $SRV_PID ]] || return 0
    stop_pids "$SRV_PID"
    SRV_PID=""
}

# shellcheck disable=SC2317  # runs from the exit trap
stop_procs() { stop_server; }
bench_tmp

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ready probe: 0 when the server on port $1 answers PING.
# shellcheck disable=SC2317  # called by wait_ready
answers_ping() { [[ $(redis-cli -p "$1" PING 2>/dev/null) == PONG ]]; }

# Starts server $1 (redis | ringline1 | ringline2) on port $2.
start_server() {
    local kind=$1 port=$2
    case $kind in
        redis)
            taskset -c "$SERVER_CPU" redis-server --port "$port" --bind 127.0.0.1 --save '' \
                --appendonly no --daemonize no --logfile "$TMP/redis.$port.log" \
                >/dev/null 2>&1 &
            ;;
        ringline1)
            taskset -c "$SERVER_CPU" "$RINGLINE" --workers 1 --listen "tcp://127.0.0.1:$port" \
                "${RL_EXTRA[@]}" scripts/redis.lua >"$TMP/ringline.$port.log" 2>&1 &
            ;;
        ringline2)
            "$RINGLINE" --workers 2 --listen "tcp://127.0.0.1:$port" \
                "${RL_EXTRA[@]}" scripts/redis.lua >"$TMP/ringline.$port.log" 2>&1 &
            ;;
    esac
    SRV_PID=$!
    wait_ready "$SRV_PID" "$port" answers_ping && return 0
    warn "$kind did not start on port $port"
    cat "$TMP"/*."$port".log >&2 2>/dev/null || true
    return 1
}

label_of() {
    case $1 in
        redis) echo "redis-server" ;;
        ringline1) echo "ringline -w1" ;;
        ringline2) echo "ringline -w2" ;;
    esac
}

declare -A RPS PERCORE
FAILED=0
DISTURBED=0

# One run: server $1, depth $2.  Keeps the best req/s per test.
run_one() {
    local kind=$1 depth=$2 port out rc=0 client=(taskset -c "$CLIENT_CPU")
    port=$(free_port)
    if ! start_server "$kind" "$port"; then
        stop_server
        FAILED=1
        return 0
    fi
    [[ $kind == ringline2 ]] && client=()
    out="$TMP/bench.$kind.$depth.$port"
    local b0 k0 t0 b1 k1 t1 s0 s1 note=""
    read -r b0 t0 k0 < <(core_jiffies "$SERVER_CPU")
    s0=$(proc_ticks "$SRV_PID")
    "${client[@]}" redis-benchmark -p "$port" -c "$CONNS" -n "$REQUESTS" -P "$depth" \
        -d "$VALUE_SIZE" -t "$TESTS" -q --csv >"$out" 2>"$out.err" || rc=$?
    read -r b1 t1 k1 < <(core_jiffies "$SERVER_CPU")
    s1=$(proc_ticks "$SRV_PID")
    if [[ $kind != ringline2 ]]; then
        # Processes other than the server on its core: more than a little
        # means another load disturbed the numbers.
        local other
        other=$(other_pct "$((k1 - k0))" "$((s1 - s0))" "$((t1 - t0))")
        note="core $SERVER_CPU: $(pct "$((b1 - b0))" "$((t1 - t0))")% busy, others ${other}%"
        # Per core: the run's requests (every test) per second of the
        # server's own CPU time; the best run is kept.
        local ntests percore
        ntests=$(awk -F, '{ print NF }' <<<"$TESTS")
        percore=$(per_cpu_ticks "$((REQUESTS * ntests))" "$((s1 - s0))")
        if [[ -n $percore ]]; then
            note+=", $percore req per CPU-second"
            if [[ -z ${PERCORE[$kind|$depth]:-} ]] || float_gt "$percore" "${PERCORE[$kind|$depth]}"; then
                PERCORE[$kind|$depth]=$percore
            fi
        fi
        if [[ $other -gt 10 ]]; then
            note+=" (DISTURBED)"
            DISTURBED=1
        fi
    fi
    if ! kill -0 "$SRV_PID" 2>/dev/null; then
        warn "$(label_of "$kind") died during the run (-P $depth)"
        rc=1
    fi
    stop_server
    if [[ $rc -ne 0 ]] || grep -qi error "$out" "$out.err"; then
        warn "redis-benchmark against $(label_of "$kind") -P $depth failed (rc=$rc):"
        cat "$out" "$out.err" >&2 || true
        FAILED=1
        return 0
    fi
    local test rps
    while IFS=, read -r test rps _; do
        test=${test//\"/}
        rps=${rps//\"/}
        [[ $test == test ]] && continue
        [[ -n $rps ]] || continue
        printf '  %-13s -P %-3s %-16s %12s req/s  %s\n' "$(label_of "$kind")" "$depth" "$test" "$rps" \
            "$note" >&2
        local key="$kind|$depth|$test"
        if [[ -z ${RPS[$key]:-} ]] || float_gt "$rps" "${RPS[$key]}"; then
            RPS[$key]=$rps
        fi
    done <"$out"
}

KINDS=(ringline1 redis)
[[ $WORKERS2 == 1 ]] && KINDS+=(ringline2)

echo "bench_redis: redis-benchmark -c $CONNS -n $REQUESTS -d $VALUE_SIZE -t $TESTS; servers on core $SERVER_CPU," \
    "client on core $CLIENT_CPU (ringline -w2: unpinned); $(redis-server --version | awk '{ print $3 }')" >&2
for ((r = 1; r <= REPEAT; r++)); do
    for depth in "${DEPTHS[@]}"; do
        for kind in "${KINDS[@]}"; do
            run_one "$kind" "$depth"
        done
    done
done

IFS=, read -ra TLIST <<<"$TESTS"
echo
printf '%-6s %-5s %14s %14s %14s %9s %9s  %s\n' "test" "-P" "redis-server" "ringline -w1" "ringline -w2" \
    "w1/redis" "w2/redis" "target (w1)"
MET_ALL=1
for depth in "${DEPTHS[@]}"; do
    want=1.0
    [[ $depth -gt 1 ]] && want=1.2
    for t in "${TLIST[@]}"; do
        T=${t^^}
        rs=${RPS["redis|$depth|$T"]:-}
        r1=${RPS["ringline1|$depth|$T"]:-}
        r2=${RPS["ringline2|$depth|$T"]:-}
        met="-"
        if [[ -n $rs && -n $r1 ]]; then
            if awk -v a="$r1" -v b="$rs" -v w="$want" 'BEGIN { exit !(a >= w * b) }'; then
                met="met (>= ${want}x)"
            else
                met="NOT met (>= ${want}x)"
                MET_ALL=0
            fi
        fi
        printf '%-6s %-5s %14s %14s %14s %9s %9s  %s\n' "$T" "$depth" "${rs:--}" "${r1:--}" "${r2:--}" \
            "$(ratio "$r1" "$rs" x)" "$(ratio "$r2" "$rs" x)" "$met"
    done
done
echo
echo "per core: requests (all tests of a run) per second of the server's own CPU time, best run;"
echo "  the measure that counts when the server does not saturate its core (redis-benchmark"
echo "  on one core is often the limit against ringline)"
printf '%-5s %14s %14s %9s\n' "-P" "redis-server" "ringline -w1" "w1/redis"
for depth in "${DEPTHS[@]}"; do
    pr=${PERCORE["redis|$depth"]:-}
    p1=${PERCORE["ringline1|$depth"]:-}
    printf '%-5s %14s %14s %9s\n' "$depth" "${pr:--}" "${p1:--}" "$(ratio "$p1" "$pr" x)"
done
echo
[[ $WORKERS2 != 1 ]] || echo "bench_redis: ringline -w2 runs unpinned, sharing both cores with redis-benchmark"
if [[ $MET_ALL == 1 ]]; then
    echo "bench_redis: targets met (ringline -w1 >= 1.0x redis-server at -P 1, >= 1.2x at -P 16)"
else
    echo "bench_redis: targets NOT all met (ringline -w1 >= 1.0x redis-server at -P 1, >= 1.2x at -P 16)"
fi
[[ $FAILED == 0 ]] || echo "bench_redis: some runs failed (see above)"
[[ $DISTURBED == 0 ]] || echo "bench_redis: other processes used the server core during some runs: numbers disturbed"
exit 0
