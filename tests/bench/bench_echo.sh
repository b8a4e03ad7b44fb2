#!/usr/bin/env bash
# bench_echo.sh: pinned echo benchmark of ringline (Lua and built-in C handler) against a plain epoll server.
#
# Usage: bash tests/bench/bench_echo.sh BUILD_DIR
#   BUILD_DIR holds ringline, bench/echo_load and bench/epoll_echo.
# Environment (all optional):
#   BENCH_SECONDS=5      measured seconds per run
#   BENCH_WARMUP=1       warmup seconds per run (not measured)
#   BENCH_REPEAT=1       runs per server and config; servers alternate, best kept
#   BENCH_SERVERS="lua coro builtin epoll"   which servers to run (coro: the echo
#                          as a sequential on_connect task, tests/bench/coro_echo.lua)
#   BENCH_SERVER_CPU=0 BENCH_CLIENT_CPU=1   cores to pin server / load generator
#   BENCH_PORT_BASE=17300                   first port tried; each run gets a fresh one
#   RINGLINE=BUILD_DIR/ringline             ringline binary
#   BENCH_CONFIGS="a b c c+ d"  which message configs to run (default all)
#   RINGLINE_ARGS=""     extra ringline options (e.g. buffer settings), added to both ringline rows
set -euo pipefail

BENCH_NAME=bench_echo
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_args "$@"

DURATION=${BENCH_SECONDS:-5}
WARMUP=${BENCH_WARMUP:-1}
REPEAT=${BENCH_REPEAT:-1}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
PORT=${BENCH_PORT_BASE:-17300}
read -ra SERVERS <<<"${BENCH_SERVERS:-lua coro builtin epoll}"
RINGLINE=${RINGLINE:-$BUILD/ringline}
read -ra RL_EXTRA <<<"${RINGLINE_ARGS:-}"
LOAD=$BUILD/bench/echo_load
EPOLL=$BUILD/bench/epoll_echo

# name size depth conns; c+ is the extra 16 KiB depth-4 case, d messages
# far past --high-water (the send queue pauses the receive every message).
CONFIGS=(
    "a:64B/d1/c50 64 1 50"
    "b:64B/d16/c50 64 16 50"
    "c:16K/d1/c10 16384 1 10"
    "c+:16K/d4/c10 16384 4 10"
    "d:256K/d1/c10 262144 1 10"
)
# BENCH_CONFIGS="c d" runs only those (by the name before the colon).
if [[ -n ${BENCH_CONFIGS:-} ]]; then
    keep=()
    for cfg in "${CONFIGS[@]}"; do
        for want in $BENCH_CONFIGS; do
            [[ ${cfg%%:*} == "$want" ]] && keep+=("$cfg")
        done
    done
    [[ ${#keep[@]} -gt 0 ]] || die "BENCH_CONFIGS='$BENCH_CONFIGS' names no config (a b c c+ d)"
    CONFIGS=("${keep[@]}")
fi

is_num "$DURATION" || die "BENCH_SECONDS must be a number, got '$DURATION'"
is_num "$WARMUP" || die "BENCH_WARMUP must be a number, got '$WARMUP'"
is_int "$REPEAT" || die "BENCH_REPEAT must be a positive integer, got '$REPEAT'"
[[ ${#SERVERS[@]} -gt 0 ]] || die "BENCH_SERVERS is empty"

check_cores "$SERVER_CPU" "$CLIENT_CPU" "server and client"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
[[ -x $LOAD ]] || die "missing $LOAD (build it first)"

label_of() {
    case $1 in
        lua) echo "ringline-lua" ;;
        coro) echo "ringline-coro" ;;
        builtin) echo "ringline-C" ;;
        epoll) echo "epoll_echo" ;;
        *) die "unknown server '$1' in BENCH_SERVERS (want lua, coro, builtin, epoll)" ;;
    esac
}

# Sets CMD to the server command line for server $1 on port $2.
server_cmd() {
    case $1 in
        lua) CMD=("$RINGLINE" --workers 1 --listen "tcp://127.0.0.1:$2" "${RL_EXTRA[@]}" scripts/echo.lua) ;;
        coro) CMD=("$RINGLINE" --workers 1 --listen "tcp://127.0.0.1:$2" "${RL_EXTRA[@]}" tests/bench/coro_echo.lua) ;;
        builtin) CMD=("$RINGLINE" --workers 1 --listen "tcp://127.0.0.1:$2" "${RL_EXTRA[@]}" --builtin echo) ;;
        epoll) CMD=("$EPOLL" "$2") ;;
    esac
}

for s in "${SERVERS[@]}"; do
    label_of "$s" >/dev/null
    case $s in
        lua | coro | builtin) [[ -x $RINGLINE ]] || die "missing $RINGLINE (or set BENCH_SERVERS=epoll)" ;;
        epoll) [[ -x $EPOLL ]] || die "missing $EPOLL (build it first)" ;;
    esac
    [[ $s != lua || -f scripts/echo.lua ]] || die "missing $REPO/scripts/echo.lua"
done

SRV_PID=""
LOAD_PID=""
# Unquoted: either may be empty.
# shellcheck disable=SC2086,SC2317  # runs from the exit trap
stop_procs() { stop_pids $LOAD_PID $SRV_PID; }
bench_tmp

declare -A RATE MBPS CCPU SCPU FAIL
FAILED=0

# Runs one load against server $2 for config $1 (index into CONFIGS); keeps the best rate.
run_one() {
    local ci=$1 srv=$2 name size depth conns key log out err rc=0 line rate
    read -r name size depth conns <<<"${CONFIGS[$ci]}"
    key="$ci|$srv"
    next_port
    server_cmd "$srv" "$PORT"
    log="$TMP/$srv.$PORT.log"
    out="$TMP/load.$PORT.out"
    err="$TMP/load.$PORT.err"
    taskset -c "$SERVER_CPU" "${CMD[@]}" >"$log" 2>&1 &
    SRV_PID=$!
    if ! wait_ready "$SRV_PID" "$PORT"; then
        warn "$(label_of "$srv") did not start on port $PORT: ${CMD[*]}"
        tail -n 20 "$log" >&2 || true
        stop_pids "$SRV_PID"
        SRV_PID=""
        FAIL[$key]="no-start"
        FAILED=1
        return 0
    fi

    taskset -c "$CLIENT_CPU" "$LOAD" --host 127.0.0.1 --port "$PORT" --conns "$conns" \
        --size "$size" --depth "$depth" --duration "$DURATION" --warmup "$WARMUP" >"$out" 2>"$err" &
    LOAD_PID=$!
    core_window "$SERVER_CPU" "$WARMUP" "$DURATION"
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""

    if ! kill -0 "$SRV_PID" 2>/dev/null; then
        warn "$(label_of "$srv") died during the run (config $name)"
        tail -n 20 "$log" >&2 || true
        [[ $rc -ne 0 ]] || rc=1
    fi
    stop_pids "$SRV_PID"
    SRV_PID=""
    line=$(grep -m1 '^RESULT ' "$out" || true)
    if [[ $rc -ne 0 || -z $line ]]; then
        warn "load failed against $(label_of "$srv") (config $name, rc=$rc):"
        cat "$err" >&2 || true
        FAIL[$key]="FAIL"
        FAILED=1
        return 0
    fi
    local scpu ccpu
    rate=$(field msgs_per_s "$line")
    ccpu=$(field client_cpu_pct "$line")
    scpu=$(pct "$WIN_BUSY" "$WIN_TOTAL" 1)
    printf '  %-14s %-13s run: %12s msgs/s  client %5s%%  server core %5s%%\n' \
        "$name" "$(label_of "$srv")" "$rate" "$ccpu" "$scpu" >&2
    if [[ -z ${RATE[$key]:-} ]] || float_gt "$rate" "${RATE[$key]}"; then
        RATE[$key]=$rate
        MBPS[$key]=$(field mb_per_s "$line")
        CCPU[$key]=$ccpu
        SCPU[$key]=$scpu
    fi
}

echo "== ringline echo benchmark =="
host_lines 11
echo "gcc:       $(gcc --version 2>/dev/null | head -n1 || echo 'not found')"
echo "commit:    $(git_commit)"
echo "pinning:   server taskset -c $SERVER_CPU, load generator taskset -c $CLIENT_CPU"
echo "settings:  duration=${DURATION}s warmup=${WARMUP}s repeat=$REPEAT (best of N, servers alternate)"
echo "servers:"
for s in "${SERVERS[@]}"; do
    server_cmd "$s" PORT
    printf '  %-13s %s\n' "$(label_of "$s")" "taskset -c $SERVER_CPU ${CMD[*]}"
done
for s in "${SERVERS[@]}"; do
    if [[ $s == lua || $s == coro || $s == builtin ]]; then
        # No buffer options on the command lines means ringline's defaults; show them.
        echo "ringline:  $("$RINGLINE" --version 2>&1 | head -n1 || true)"
        echo "ringline buffer options in effect unless RINGLINE_ARGS overrides (from --help):"
        # Join each option's wrapped description lines into one line.
        "$RINGLINE" --help 2>&1 | awk '
            /^ *-.*--buffers |^ *-.*--buffer-size / { if (l != "") print l; l = $0; next }
            l != "" && /^          +[^ -]/ { sub(/^ +/, " "); l = l $0; next }
            l != "" { print l; l = "" }
            END { if (l != "") print l }' | sed 's/^ */    /; s/   */  /g' || true
        break
    fi
done
echo "load:      taskset -c $CLIENT_CPU $LOAD --host 127.0.0.1 --port PORT --conns C --size S --depth D --duration $DURATION --warmup $WARMUP"
echo

for ((ci = 0; ci < ${#CONFIGS[@]}; ci++)); do
    for ((rep = 0; rep < REPEAT; rep++)); do
        for s in $(rotated "$rep" "${SERVERS[@]}"); do
            run_one "$ci" "$s"
        done
    done
done
echo >&2

fmt='%-14s | %-13s | %12s | %8s | %11s | %12s | %11s | %9s\n'
# shellcheck disable=SC2059
printf "$fmt" config server msgs/s MB/s "client CPU%" "server core%" "vs pure-C" "vs epoll"
printf '%s\n' "---------------+---------------+--------------+----------+-------------+--------------+-------------+----------"
client_bound=()
for ((ci = 0; ci < ${#CONFIGS[@]}; ci++)); do
    read -r name _ <<<"${CONFIGS[$ci]}"
    for s in "${SERVERS[@]}"; do
        key="$ci|$s"
        if [[ -z ${RATE[$key]:-} ]]; then
            # shellcheck disable=SC2059
            printf "$fmt" "$name" "$(label_of "$s")" "${FAIL[$key]:-FAIL}" - - - - -
            continue
        fi
        # shellcheck disable=SC2059
        printf "$fmt" "$name" "$(label_of "$s")" "${RATE[$key]}" "${MBPS[$key]}" "${CCPU[$key]}" "${SCPU[$key]}" \
            "$(ratio "${RATE[$key]}" "${RATE[$ci|builtin]:-}")" "$(ratio "${RATE[$key]}" "${RATE[$ci|epoll]:-}")"
        # A saturated client with an unsaturated server core means the number is a client limit.
        if awk -v c="${CCPU[$key]}" -v s="${SCPU[$key]}" 'BEGIN { exit !(c >= 95 && s < 90) }'; then
            client_bound+=("$name/$(label_of "$s")")
        fi
    done
done
echo
echo "msgs/s = echoed messages per second (round trips); MB/s = 10^6 payload bytes echoed per second."
echo "client CPU% = load generator user+sys over the measured period; server core% = busy share of core $SERVER_CPU."
if [[ ${#client_bound[@]} -gt 0 ]]; then
    echo "note: load generator saturated while the server core had headroom (client-bound): ${client_bound[*]}"
fi
if [[ $FAILED -ne 0 ]]; then
    echo "bench_echo: some runs failed (see messages above)" >&2
    exit 1
fi
