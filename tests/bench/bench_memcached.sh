#!/usr/bin/env bash
# bench_memcached.sh: pinned memcached benchmark: ringline scripts/memcached.lua
# (--workers 1) against memcached 1.6 (-t 1), each on one core, a get/set mix
# from the load generator on another core, one request per round trip
# ("plain") and BENCH_DEPTH requests per write ("pipelined").
#
# Usage: bash tests/bench/bench_memcached.sh BUILD_DIR
#   BUILD_DIR holds ringline and bench/mc_load (the Makefile builds
#   tests/bench/*.c into BUILD_DIR/bench/).
# Needs: memcached, taskset (util-linux); memcaslap (libmemcached-tools) for
#   the optional cross-check row: apt-get install memcached libmemcached-tools
# Load: mc_load (tests/bench/mc_load.c), 50 connections, 32-byte keys,
#   100-byte values, 90% get / 10% set over 10000 keys set beforehand (every
#   get hits), every reply checked.  memaslap (memcaslap) cannot pipeline, so
#   it only cross-checks the plain mode when BENCH_MEMASLAP=1 (default).
# Environment (all optional):
#   BENCH_SECONDS=5        measured seconds per run
#   BENCH_WARMUP=1         warmup seconds before each measured run
#   BENCH_REPEAT=1         runs per server and mode; servers alternate, best kept
#   BENCH_CONNECTIONS=50   connections
#   BENCH_DEPTH=16         requests per write in the pipelined mode
#   BENCH_KEYS=10000       key space
#   BENCH_GET_RATIO=0.9    share of gets
#   BENCH_VALUE_SIZE=100   value bytes
#   BENCH_MODES="plain pipelined"
#   BENCH_MEMASLAP=1       0: skip the memaslap cross-check
#   BENCH_SERVER_CPU=0 BENCH_CLIENT_CPU=1   cores for the server and the load
#   BENCH_PORT_BASE=17600  first port tried; each run gets a fresh free one
#   BENCH_STRICT=0         1: exit 1 when the target is not met
#   RINGLINE=BUILD_DIR/ringline   RINGLINE_ARGS=""   extra ringline options
set -euo pipefail

BENCH_NAME=bench_memcached
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_args "$@"

DURATION=${BENCH_SECONDS:-5}
WARMUP=${BENCH_WARMUP:-1}
REPEAT=${BENCH_REPEAT:-1}
CONNS=${BENCH_CONNECTIONS:-50}
DEPTH=${BENCH_DEPTH:-16}
VALUE_SIZE=${BENCH_VALUE_SIZE:-100}
KEYS=${BENCH_KEYS:-10000}
GET_RATIO=${BENCH_GET_RATIO:-0.9}
MEMASLAP=${BENCH_MEMASLAP:-1}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
PORT=${BENCH_PORT_BASE:-17600}
STRICT=${BENCH_STRICT:-0}
read -ra MODES <<<"${BENCH_MODES:-plain pipelined}"
RINGLINE=${RINGLINE:-$BUILD/ringline}
read -ra RL_EXTRA <<<"${RINGLINE_ARGS:-}"
LOAD=$BUILD/bench/mc_load
SERVERS=(memcached ringline)
TARGET=1.2
INSTALL_HINT="apt-get install memcached libmemcached-tools"

# -- Settings and tools --------------------------------------------------------
is_num "$DURATION" || die "BENCH_SECONDS must be a number, got '$DURATION'"
is_num "$WARMUP" || die "BENCH_WARMUP must be a number, got '$WARMUP'"
is_int "$REPEAT" || die "BENCH_REPEAT must be a positive integer, got '$REPEAT'"
is_int "$CONNS" || die "BENCH_CONNECTIONS must be a positive integer, got '$CONNS'"
is_int "$DEPTH" || die "BENCH_DEPTH must be a positive integer, got '$DEPTH'"
is_int "$KEYS" || die "BENCH_KEYS must be a positive integer, got '$KEYS'"
is_num "$GET_RATIO" || die "BENCH_GET_RATIO must be a number in 0..1, got '$GET_RATIO'"
check_modes

check_cores "$SERVER_CPU" "$CLIENT_CPU" "server and load"
command -v taskset >/dev/null || die "taskset not found: apt-get install util-linux"
MEMCACHED=$(command -v memcached || true)
[[ -n $MEMCACHED ]] || die "memcached not found: $INSTALL_HINT"
[[ -x $RINGLINE ]] || die "missing $RINGLINE (run make first)"
[[ -x $LOAD ]] || die "missing $LOAD (make builds it from tests/bench/mc_load.c)"
[[ -f scripts/memcached.lua ]] || die "missing $REPO/scripts/memcached.lua"
MEMASLAP_BIN=""
if [[ $MEMASLAP == 1 ]]; then
    MEMASLAP_BIN=$(command -v memcaslap || command -v memaslap || true)
    [[ -n $MEMASLAP_BIN ]] || warn "memcaslap not found ($INSTALL_HINT): no memaslap cross-check"
fi
MC_USER=()
[[ $(id -u) -ne 0 ]] || MC_USER=(-u root)   # memcached refuses to run as root otherwise

# -- Processes ------------------------------------------------------------------
SRV_PID=""
LOAD_PID=""
# Unquoted: either may be empty.
# shellcheck disable=SC2086,SC2317  # runs from the exit trap
stop_procs() { stop_pids $LOAD_PID $SRV_PID; }
bench_tmp

label_of() {
    case $1 in
        memcached) echo "memcached" ;;
        ringline) echo "ringline" ;;
    esac
}

server_cmd() {
    case $1 in
        memcached) CMD=("$MEMCACHED" -p "$2" -U 0 -t 1 -l 127.0.0.1 "${MC_USER[@]}") ;;
        ringline) CMD=("$RINGLINE" --workers 1 --listen "tcp://127.0.0.1:$2" "${RL_EXTRA[@]}"
                       scripts/memcached.lua) ;;
    esac
}

# wait_ready probe: 0 when the server on port $1 answers `version`.
# shellcheck disable=SC2317  # called by wait_ready
answers_version() {
    local reply
    reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'version\r\n' >&3 &&
        timeout 1 head -c 8 <&3) 2>/dev/null || true)
    [[ $reply == VERSION* ]]
}

declare -A OPS P50 P99 LCPU SCPU EFF SAT CORE NOTE FAIL MASLAP
FAILED=0

# memaslap's config: 32-byte keys, 100-byte values, the same get share.
MASLAP_CFG=$TMP/memaslap.cfg
awk -v g="$GET_RATIO" 'BEGIN {
    print "key"; print "32 32 1"; print "value"; print "100 100 1"
    print "cmd"; printf "0 %.2f\n1 %.2f\n", 1 - g, g }' >"$MASLAP_CFG"

# One measured run of server $1 in mode $2 (plain, pipelined or memaslap).
run_one() {
    local srv=$1 mode=$2 key="$1|$2" log out rc=0 s0 s1 t0 t1 b0 j0 k0 b1 j1 k1 line
    local ops p50 p99 lcpu scpu core other note="" depth=1
    [[ $mode == pipelined ]] && depth=$DEPTH
    next_port
    server_cmd "$srv" "$PORT"
    log="$TMP/$srv.$PORT.log"
    out="$TMP/load.$srv.$mode.$PORT"
    taskset -c "$SERVER_CPU" "${CMD[@]}" >"$log" 2>&1 &
    SRV_PID=$!
    if ! wait_ready "$SRV_PID" "$PORT" answers_version; then
        warn "$(label_of "$srv") did not start (or did not answer version) on port $PORT: ${CMD[*]}"
        tail -n 20 "$log" >&2 || true
        stop_pids "$SRV_PID"
        SRV_PID=""
        FAIL[$key]="no-start"
        FAILED=1
        return 0
    fi
    s0=$(proc_ticks "$SRV_PID")
    read -r b0 j0 k0 < <(core_jiffies "$SERVER_CPU")
    t0=$(now_ns)
    if [[ $mode == memaslap ]]; then
        taskset -c "$CLIENT_CPU" "$MEMASLAP_BIN" -s "127.0.0.1:$PORT" -T 1 -c "$CONNS" \
            -t "${DURATION%.*}s" -F "$MASLAP_CFG" >"$out" 2>&1 &
        LOAD_PID=$!
    else
        # mc_load's own warmup precedes the measured seconds; its prefill too.
        taskset -c "$CLIENT_CPU" "$LOAD" --port "$PORT" --conns "$CONNS" --depth "$depth" \
            --keys "$KEYS" --key-size 32 --value-size "$VALUE_SIZE" --get-ratio "$GET_RATIO" \
            --duration "$DURATION" --warmup "$WARMUP" --server-pid "$SRV_PID" >"$out" 2>&1 &
        LOAD_PID=$!
    fi
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    t1=$(now_ns)
    read -r b1 j1 k1 < <(core_jiffies "$SERVER_CPU")
    s1=$(proc_ticks "$SRV_PID")
    if ! kill -0 "$SRV_PID" 2>/dev/null; then
        warn "$(label_of "$srv") died during the run ($mode)"
        tail -n 20 "$log" >&2 || true
        rc=1
    fi
    stop_pids "$SRV_PID"
    SRV_PID=""
    # For memaslap: server CPU over the whole run; mc_load measures it
    # itself over the measured seconds.  Core use covers the whole run.
    scpu=$(ticks_pct "$((s1 - s0))" "$((t1 - t0))")
    core=$(pct "$((b1 - b0))" "$((j1 - j0))")
    other=$(other_pct "$((k1 - k0))" "$((s1 - s0))" "$((j1 - j0))")
    [[ $other -le 10 ]] || note+="other processes used ${other}% of core $SERVER_CPU; "
    if [[ $mode == memaslap ]]; then
        ops=$(awk '/^Run time:/ { for (i = 1; i <= NF; i++) if ($i == "TPS:") print $(i + 1) }' "$out")
        if [[ $rc -ne 0 || -z $ops ]]; then
            warn "memaslap failed against $(label_of "$srv") (rc=$rc):"
            tail -n 20 "$out" >&2 || true
            MASLAP[$key]="FAIL"
            return 0
        fi
        printf '  %-10s %-9s run: %12s ops/s (memaslap TPS)  server CPU %4s%%  core %s busy %4s%%%s\n' \
            "$(label_of "$srv")" "memaslap" "$ops" "$scpu" "$SERVER_CPU" "$core" \
            "${note:+  (${note%; })}" >&2
        if [[ -z ${MASLAP[$key]:-} || ${MASLAP[$key]} == FAIL ]] || float_gt "$ops" "${MASLAP[$key]}"; then
            MASLAP[$key]=$ops
        fi
        return 0
    fi
    line=$(grep -m1 '^RESULT' "$out" || true)
    if [[ $rc -ne 0 || -z $line ]]; then
        warn "mc_load failed against $(label_of "$srv") ($mode, rc=$rc):"
        tail -n 20 "$out" >&2 || true
        FAIL[$key]="FAIL"
        FAILED=1
        return 0
    fi
    ops=$(field ops_per_s "$line")
    p50=$(field p50_us "$line")
    p99=$(field p99_us "$line")
    lcpu=$(field client_cpu_pct "$line")
    scpu=$(field server_cpu_pct "$line" | awk '{ printf "%.0f", $1 }')
    eff=$(per_cpu_second "$ops" "$scpu")
    printf '  %-10s %-9s run: %12s ops/s  p50 %9s  p99 %9s  load CPU %4s%%  server CPU %4s%%  core %s busy %4s%%%s\n' \
        "$(label_of "$srv")" "$mode" "$ops" "$(fmt_us "$p50")" "$(fmt_us "$p99")" "$lcpu" "$scpu" \
        "$SERVER_CPU" "$core" "${note:+  (${note%; })}" >&2
    # A run counts as saturated when the server used nearly all of its core.
    awk -v c="$scpu" -v b="$core" 'BEGIN { exit !(c >= 90 || b >= 95) }' && SAT[$key]=1 || SAT[$key]=0
    if [[ -z ${OPS[$key]:-} ]] || float_gt "$ops" "${OPS[$key]}"; then
        OPS[$key]=$ops
        P50[$key]=$p50
        P99[$key]=$p99
        LCPU[$key]=$lcpu
        SCPU[$key]=$scpu
        EFF[$key]=$eff
        CORE[$key]=$core
        NOTE[$key]=$note
    fi
}

# -- Header -----------------------------------------------------------------------
echo "== ringline memcached benchmark =="
host_lines 13
echo "commit:      $(git_commit)"
echo "memcached:   $("$MEMCACHED" -V 2>&1 | head -n1)"
echo "ringline:    $("$RINGLINE" --version 2>&1 | head -n1)"
echo "pinning:     server taskset -c $SERVER_CPU, load taskset -c $CLIENT_CPU"
echo "servers:     memcached -p PORT -U 0 -t 1 -l 127.0.0.1 ${MC_USER[*]}"
echo "             ringline --workers 1 --listen tcp://127.0.0.1:PORT ${RL_EXTRA[*]} scripts/memcached.lua"
echo "load:        mc_load --conns $CONNS --keys $KEYS --key-size 32 --value-size $VALUE_SIZE --get-ratio $GET_RATIO" \
     "--duration $DURATION --warmup $WARMUP; plain: --depth 1, pipelined: --depth $DEPTH (requests per write)"
[[ -z $MEMASLAP_BIN ]] || echo "cross-check: $MEMASLAP_BIN -T 1 -c $CONNS -t ${DURATION%.*}s (32 B keys, 100 B values, ${GET_RATIO} get) -- plain only"
echo "repeat:      $REPEAT (best ops/s of N, servers alternate)"
echo

# -- Runs -------------------------------------------------------------------------
for mode in "${MODES[@]}"; do
    for ((rep = 0; rep < REPEAT; rep++)); do
        for s in $(rotated "$rep" "${SERVERS[@]}"); do
            run_one "$s" "$mode"
        done
    done
done
if [[ -n $MEMASLAP_BIN ]]; then
    for s in "${SERVERS[@]}"; do
        run_one "$s" memaslap
    done
fi
echo >&2

fmt='%-10s | %-9s | %12s | %9s | %9s | %12s | %8s | %10s | %14s | %12s | %10s\n'
# shellcheck disable=SC2059
printf "$fmt" server mode ops/s p50 p99 "vs memcached" "load CPU" "server CPU" "ops/CPU-second" "vs memcached" "core$SERVER_CPU busy"
printf '%s\n' "-----------+-----------+--------------+-----------+-----------+--------------+----------+------------+----------------+--------------+-----------"
client_bound=()
notes=()
for mode in "${MODES[@]}"; do
    for s in "${SERVERS[@]}"; do
        key="$s|$mode"
        if [[ -z ${OPS[$key]:-} ]]; then
            # shellcheck disable=SC2059
            printf "$fmt" "$(label_of "$s")" "$mode" "${FAIL[$key]:-FAIL}" - - - - - - - -
            continue
        fi
        # shellcheck disable=SC2059
        printf "$fmt" "$(label_of "$s")" "$mode" "${OPS[$key]}" "$(fmt_us "${P50[$key]}")" \
            "$(fmt_us "${P99[$key]}")" "$(ratio "${OPS[$key]}" "${OPS[memcached|$mode]:-}" x)" \
            "${LCPU[$key]}%" "${SCPU[$key]}%" "${EFF[$key]:--}" \
            "$(ratio "${EFF[$key]:-}" "${EFF[memcached|$mode]:-}" x)" "${CORE[$key]}%"
        if awk -v c="${LCPU[$key]}" 'BEGIN { exit !(c >= 95) }'; then
            client_bound+=("$(label_of "$s")/$mode")
        fi
        [[ -z ${NOTE[$key]} ]] || notes+=("$(label_of "$s")/$mode: ${NOTE[$key]%; }")
    done
done
if [[ -n $MEMASLAP_BIN ]]; then
    for s in "${SERVERS[@]}"; do
        key="$s|memaslap"
        # shellcheck disable=SC2059
        printf "$fmt" "$(label_of "$s")" "memaslap" "${MASLAP[$key]:-FAIL}" - - \
            "$(ratio "${MASLAP[$key]:-}" "${MASLAP[memcached|memaslap]:-}" x)" - - - - -
    done
fi
echo
echo "ops/s = replies per second (gets + sets), every reply checked by mc_load; p50/p99 = per write"
echo "        (one request, or $DEPTH pipelined), from write to the last reply."
echo "load CPU, server CPU = user+sys of mc_load / of the server process over the measured seconds;"
echo "ops/CPU-second = ops/s / server CPU: what one core of the server does per second of its time,"
echo "        the per-core measure when a server does not saturate its core;"
echo "core$SERVER_CPU busy = busy share of the server's core over the whole run (/proc/stat, softirq included)."
echo "memaslap = memcaslap's TPS, one request per round trip (it cannot pipeline): a cross-check."
if [[ ${#client_bound[@]} -gt 0 ]]; then
    echo "note: the load generator saturated its core (>= 95%) for: ${client_bound[*]} -- those rates are (partly) a client limit."
fi
for n in "${notes[@]}"; do
    echo "warning: $n"
done

# -- Targets ----------------------------------------------------------------------
unmet=0
echo
echo "target: ringline >= ${TARGET}x memcached -t 1 in ops/s, per core (both pinned to core $SERVER_CPU):"
for mode in "${MODES[@]}"; do
    r="ringline|$mode"
    m="memcached|$mode"
    if [[ -z ${OPS[$r]:-} || -z ${OPS[$m]:-} ]]; then
        printf '  %-9s: not measured\n' "$mode"
        unmet=1
        continue
    fi
    x=$(awk -v a="${OPS[$r]}" -v b="${OPS[$m]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    e=$(ratio "${EFF[$r]:-}" "${EFF[$m]:-}" x)
    sat="neither server saturated its core: the rate is bound by round trips, see ops/CPU-second"
    if [[ ${SAT[$r]:-0} == 1 && ${SAT[$m]:-0} == 1 ]]; then
        sat="both servers saturated their core"
    elif [[ ${SAT[$m]:-0} == 1 ]]; then
        sat="memcached saturated its core, ringline did not"
    elif [[ ${SAT[$r]:-0} == 1 ]]; then
        sat="ringline saturated its core, memcached did not"
    fi
    if awk -v x="$x" -v w="$TARGET" 'BEGIN { exit !(x >= w) }'; then
        printf '  %-9s: %sx ops/s -> met   (ops/CPU-second %s; %s)\n' "$mode" "$x" "$e" "$sat"
    else
        printf '  %-9s: %sx ops/s -> NOT met   (ops/CPU-second %s; %s)\n' "$mode" "$x" "$e" "$sat"
        unmet=1
    fi
done

if [[ $FAILED -ne 0 ]]; then
    warn "some runs failed (see messages above)"
    exit 1
fi
if [[ $unmet -ne 0 && $STRICT == 1 ]]; then
    warn "target not met (BENCH_STRICT=1)"
    exit 1
fi
exit 0
