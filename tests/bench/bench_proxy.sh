#!/usr/bin/env bash
# bench_proxy.sh: TCP proxy benchmark: ringline scripts/proxy.lua against
# HAProxy (mode tcp, one thread), both pinned to the same core.
#
# Usage: bash tests/bench/bench_proxy.sh BUILD_DIR
#   BUILD_DIR holds ringline, bench/echo_load and bench/epoll_echo.
#
# Runs (each proxy in turn, and direct to the upstream as a reference):
#   (a) redis-benchmark -c 50 -n 400000 -P 16 -t set,get through the proxy
#       to a redis-server: requests/s and p99 latency (--csv output)
#   (b) bulk echo: echo_load --size 65536 --depth 4 --conns 10 through the
#       proxy to an echo upstream (epoll_echo): MB/s (each direction)
#
# Pinning (the machine this was written for has 2 cores): the proxy under
# test gets core BENCH_PROXY_CPU (0) to itself; the load generator AND the
# upstream (redis-server / epoll_echo) share core BENCH_LOAD_CPU (1).  With
# only two cores something has to share, and it must not be the proxy: its
# core's busy share is then exactly the proxy's cost, both proxies face the
# same client + upstream pair, and "proxy core %" shows whether the proxy
# or the shared core was the bottleneck.  Direct runs (no proxy) show what
# core 1 alone can do.  On a machine with a third core, BENCH_UPSTREAM_CPU
# gives the upstream its own core: then the proxy, not the shared core, is
# what the redis rates measure.
#
# Target: ringline >= 1.0x HAProxy's throughput with a lower p99.  Printed,
# never enforced: the exit status is 1 only when a run could not be done.
#
# Environment (all optional):
#   BENCH_SECONDS=5 BENCH_WARMUP=1   echo_load measured / warmup seconds
#   BENCH_REPEAT=1                   rounds; proxies alternate, best kept
#   BENCH_REDIS_N=400000             redis-benchmark -n
#   BENCH_PROXY_CPU=0 BENCH_LOAD_CPU=1
#   BENCH_UPSTREAM_CPU=BENCH_LOAD_CPU  the upstreams' core
#   BENCH_PORT_BASE=17500            first port tried
#   BENCH_PROXIES="haproxy ringline" which proxies to run
#   RINGLINE=BUILD_DIR/ringline      ringline binary
set -euo pipefail

BENCH_NAME=bench_proxy
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_args "$@"

DURATION=${BENCH_SECONDS:-5}
WARMUP=${BENCH_WARMUP:-1}
REPEAT=${BENCH_REPEAT:-1}
REDIS_N=${BENCH_REDIS_N:-400000}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
UPSTREAM_CPU=${BENCH_UPSTREAM_CPU:-$LOAD_CPU}
PORT=${BENCH_PORT_BASE:-17500}
read -ra PROXIES <<<"${BENCH_PROXIES:-haproxy ringline}"
RINGLINE=${RINGLINE:-$BUILD/ringline}
LOAD=$BUILD/bench/echo_load
EPOLL=$BUILD/bench/epoll_echo
REDIS_CLIENTS=50
REDIS_PIPELINE=16
BULK_SIZE=65536
BULK_DEPTH=4
BULK_CONNS=10

is_num "$DURATION" || die "BENCH_SECONDS must be a number, got '$DURATION'"
is_num "$WARMUP" || die "BENCH_WARMUP must be a number, got '$WARMUP'"
is_int "$REPEAT" || die "BENCH_REPEAT must be a positive integer, got '$REPEAT'"
is_int "$REDIS_N" || die "BENCH_REDIS_N must be a positive integer, got '$REDIS_N'"
check_cores "$PROXY_CPU" "$LOAD_CPU" "proxy and load"
check_cores "$PROXY_CPU" "$UPSTREAM_CPU" "proxy and upstream"
command -v taskset >/dev/null || die "taskset not found (apt-get install util-linux)"
[[ -x $RINGLINE ]] || die "missing $RINGLINE (run make first)"
[[ -f scripts/proxy.lua ]] || die "missing $REPO/scripts/proxy.lua"
[[ -x $LOAD && -x $EPOLL ]] || die "missing $LOAD or $EPOLL (make $BUILD/bench/echo_load $BUILD/bench/epoll_echo)"

HAVE_HAPROXY=1
HAVE_REDIS=1
for p in "${PROXIES[@]}"; do
    case $p in
        haproxy | ringline) ;;
        *) die "unknown proxy '$p' in BENCH_PROXIES (want haproxy, ringline)" ;;
    esac
done
if [[ " ${PROXIES[*]} " == *" haproxy "* ]] && ! command -v haproxy >/dev/null; then
    warn "haproxy not installed: its rows are skipped. Install it with"
    warn "    sudo apt-get install haproxy     (or: make bench-deps)"
    HAVE_HAPROXY=0
fi
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    warn "redis-server / redis-benchmark not installed: run (a) is skipped. Install with"
    warn "    sudo apt-get install redis-server redis-tools     (or: make deps)"
    HAVE_REDIS=0
fi
ACTIVE=()
for p in "${PROXIES[@]}"; do
    [[ $p == haproxy && $HAVE_HAPROXY -eq 0 ]] || ACTIVE+=("$p")
done

PIDS=()
# shellcheck disable=SC2317  # runs from the exit trap
stop_procs() { stop_pids "${PIDS[@]}"; }
bench_tmp

forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Starts "$@" pinned to core $1 in the background, output to log $2;
# sets BG_PID.
start_bg() {
    local cpu=$1 log=$2
    shift 2
    taskset -c "$cpu" "$@" >"$log" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
}

# stop_pids, and drops the pid from PIDS; returns 1 if it had died already.
stop_bg() {
    local alive=0
    kill -0 "$1" 2>/dev/null && alive=1
    stop_pids "$1"
    forget_pid "$1"
    [[ $alive -eq 1 ]]
}

FAILED=0

# -- Upstreams (core UPSTREAM_CPU) ---------------------------------------------
REDIS_PORT=""
if [[ $HAVE_REDIS -eq 1 ]]; then
    next_port
    REDIS_PORT=$PORT
    start_bg "$UPSTREAM_CPU" "$TMP/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save '' --appendonly no --dir "$TMP" --daemonize no
    REDIS_PID=$BG_PID
    wait_ready "$REDIS_PID" "$REDIS_PORT" || { tail -n 20 "$TMP/redis.log" >&2; die "redis-server did not start"; }
fi
next_port
ECHO_PORT=$PORT
start_bg "$UPSTREAM_CPU" "$TMP/echo.log" "$EPOLL" "$ECHO_PORT"
ECHO_PID=$BG_PID
wait_ready "$ECHO_PID" "$ECHO_PORT" || { tail -n 20 "$TMP/echo.log" >&2; die "epoll_echo did not start"; }

# -- Proxies (core PROXY_CPU) --------------------------------------------------
# Sets CMD (and writes haproxy's config) for proxy $1 on port $2 to upstream port $3.
proxy_cmd() {
    local kind=$1 port=$2 up=$3
    case $kind in
        haproxy)
            cat >"$TMP/haproxy.$port.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode tcp
    timeout connect 2s
    timeout client 300s
    timeout server 300s

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    server up 127.0.0.1:$up
EOF
            CMD=(haproxy -db -f "$TMP/haproxy.$port.cfg")
            ;;
        ringline)
            CMD=(env "RINGLINE_PROXY_UPSTREAMS=tcp://127.0.0.1:$up" "$RINGLINE" --workers 1
                --listen "tcp://127.0.0.1:$port" scripts/proxy.lua)
            ;;
    esac
}

# Starts proxy $1 in front of upstream port $2; sets PROXY_PID and PROXY_PORT.
start_proxy() {
    local kind=$1 up=$2
    next_port
    PROXY_PORT=$PORT
    proxy_cmd "$kind" "$PROXY_PORT" "$up"
    start_bg "$PROXY_CPU" "$TMP/$kind.$PROXY_PORT.log" "${CMD[@]}"
    PROXY_PID=$BG_PID
    if ! wait_ready "$PROXY_PID" "$PROXY_PORT"; then
        warn "$kind did not start: ${CMD[*]}"
        tail -n 20 "$TMP/$kind.$PROXY_PORT.log" >&2 || true
        stop_bg "$PROXY_PID" || true
        return 1
    fi
}

declare -A SET_RPS SET_P99 GET_RPS GET_P99 R_CPU R_PERCORE BULK BULK_CPU

# (a) redis-benchmark against port $2, row $1; keeps the best SET+GET rps.
# shellcheck disable=SC2317  # called through run_through
run_redis() {
    local row=$1 port=$2 out="$TMP/redis-bench.$1.$2.csv" b0 t0 b1 t1 rc=0 set get
    read -r b0 t0 _ < <(core_jiffies "$PROXY_CPU")
    taskset -c "$LOAD_CPU" redis-benchmark -h 127.0.0.1 -p "$port" -c "$REDIS_CLIENTS" \
        -n "$REDIS_N" -P "$REDIS_PIPELINE" -t set,get --csv >"$out" 2>"$out.err" || rc=$?
    read -r b1 t1 _ < <(core_jiffies "$PROXY_CPU")
    set=$(awk -F'","' '$1 == "\"SET" { print $2, $7 }' "$out")
    get=$(awk -F'","' '$1 == "\"GET" { print $2, $7 }' "$out")
    if [[ $rc -ne 0 || -z $set || -z $get ]]; then
        warn "redis-benchmark failed through $row (rc=$rc): $(tail -c 300 "$out.err" "$out" 2>/dev/null)"
        FAILED=1
        return 0
    fi
    local srps sp99 grps gp99
    read -r srps sp99 <<<"$set"
    read -r grps gp99 <<<"$get"
    printf '  %-9s redis   SET %10s rps p99 %6s ms | GET %10s rps p99 %6s ms | core %s %s%%\n' \
        "$row" "$srps" "$sp99" "$grps" "$gp99" "$PROXY_CPU" "$(pct $((b1 - b0)) $((t1 - t0)))" >&2
    if [[ -z ${SET_RPS[$row]:-} ]] ||
        float_gt "$(awk -v a="$srps" -v b="$grps" 'BEGIN { print a + b }')" \
            "$(awk -v a="${SET_RPS[$row]}" -v b="${GET_RPS[$row]}" 'BEGIN { print a + b }')"; then
        SET_RPS[$row]=$srps SET_P99[$row]=$sp99 GET_RPS[$row]=$grps GET_P99[$row]=$gp99
        R_CPU[$row]=$(pct $((b1 - b0)) $((t1 - t0)))
        # Per core: the run's requests (SET and GET) per second of the
        # proxy core's busy time, the proxy's own cost per request.
        R_PERCORE[$row]=$(per_cpu_ticks "$((2 * REDIS_N))" "$((b1 - b0))")
    fi
}

# (b) echo_load against port $2, row $1; keeps the best MB/s.
# shellcheck disable=SC2317  # called through run_through
run_bulk() {
    local row=$1 port=$2 out="$TMP/bulk.$1.$2.out" rc=0 line mbps
    taskset -c "$LOAD_CPU" "$LOAD" --host 127.0.0.1 --port "$port" --conns "$BULK_CONNS" \
        --size "$BULK_SIZE" --depth "$BULK_DEPTH" --duration "$DURATION" --warmup "$WARMUP" \
        >"$out" 2>"$out.err" &
    local lp=$!
    PIDS+=("$lp")
    core_window "$PROXY_CPU" "$WARMUP" "$DURATION"
    wait "$lp" || rc=$?
    forget_pid "$lp"
    line=$(grep -m1 '^RESULT ' "$out" || true)
    mbps=$(field mb_per_s "$line")
    if [[ $rc -ne 0 || -z $mbps ]]; then
        warn "echo_load failed through $row (rc=$rc): $(tail -c 300 "$out.err" 2>/dev/null)"
        FAILED=1
        return 0
    fi
    printf '  %-9s bulk    %10s MB/s | core %s %s%%\n' "$row" "$mbps" "$PROXY_CPU" \
        "$(pct "$WIN_BUSY" "$WIN_TOTAL")" >&2
    if [[ -z ${BULK[$row]:-} ]] || float_gt "$mbps" "${BULK[$row]}"; then
        BULK[$row]=$mbps
        BULK_CPU[$row]=$(pct "$WIN_BUSY" "$WIN_TOTAL")
    fi
}

# Run $1 (redis or bulk): function $2 (run_redis or run_bulk) direct to
# upstream port $3, then through a fresh instance of each proxy.
run_through() {
    local what=$1 run=$2 up=$3 p
    "$run" direct "$up"
    for p in "${ACTIVE[@]}"; do
        if start_proxy "$p" "$up"; then
            "$run" "$p" "$PROXY_PORT"
            stop_bg "$PROXY_PID" || { warn "$p died during the $what run"; tail -n 20 "$TMP/$p.$PROXY_PORT.log" >&2; FAILED=1; }
        else
            FAILED=1
        fi
    done
}

# -- Header --------------------------------------------------------------------
echo "== ringline TCP proxy benchmark =="
host_lines 11
echo "commit:    $(git_commit)"
echo "ringline:  $("$RINGLINE" --version 2>&1 | head -n1)"
[[ $HAVE_HAPROXY -eq 0 ]] || echo "haproxy:   $(haproxy -v 2>&1 | head -n1)"
[[ $HAVE_REDIS -eq 0 ]] || echo "redis:     $(redis-server --version | head -n1)"
if [[ $UPSTREAM_CPU == "$LOAD_CPU" ]]; then
    echo "pinning:   proxy alone on core $PROXY_CPU; load generator + upstream share core $LOAD_CPU"
    echo "           (2 cores: the proxy's core busy share is its whole cost; both proxies"
    echo "           face the same client and upstream; 'direct' = no proxy)"
else
    echo "pinning:   proxy on core $PROXY_CPU, load generator on core $LOAD_CPU, upstream on core $UPSTREAM_CPU"
fi
echo "settings:  (a) redis-benchmark -c $REDIS_CLIENTS -n $REDIS_N -P $REDIS_PIPELINE -t set,get --csv"
echo "           (b) echo_load --size $BULK_SIZE --depth $BULK_DEPTH --conns $BULK_CONNS" \
    "--duration $DURATION --warmup $WARMUP, upstream epoll_echo"
echo "           repeat=$REPEAT (best of N, proxies alternate)"
echo "proxies:"
for p in "${ACTIVE[@]}"; do
    proxy_cmd "$p" PORT UPSTREAM_PORT
    printf '  %-9s taskset -c %s %s\n' "$p" "$PROXY_CPU" "${CMD[*]}"
    if [[ $p == haproxy ]]; then
        echo "            config: nbthread 1, mode tcp, default buffers (tune.bufsize 16k), no splice"
    fi
done
echo

# -- Runs ----------------------------------------------------------------------
echo "runs:" >&2
for ((round = 1; round <= REPEAT; round++)); do
    if [[ $HAVE_REDIS -eq 1 ]]; then
        run_through redis run_redis "$REDIS_PORT"
    fi
    run_through bulk run_bulk "$ECHO_PORT"
done

# -- Results -------------------------------------------------------------------
ROWS=(direct "${ACTIVE[@]}")
if [[ $HAVE_REDIS -eq 1 ]]; then
    echo "(a) redis SET/GET through the proxy (requests/s, p99 ms; busy % of the proxy's core)"
    printf '  %-9s %12s %9s %12s %9s %11s\n' target "SET rps" "SET p99" "GET rps" "GET p99" "core $PROXY_CPU"
    for r in "${ROWS[@]}"; do
        if [[ -n ${SET_RPS[$r]:-} ]]; then
            printf '  %-9s %12s %9s %12s %9s %10s%%\n' "$r" "${SET_RPS[$r]}" "${SET_P99[$r]}" \
                "${GET_RPS[$r]}" "${GET_P99[$r]}" "${R_CPU[$r]}"
        else
            printf '  %-9s %12s\n' "$r" "FAILED"
        fi
    done
fi
echo "(b) bulk echo, 64 KiB messages, depth 4, 10 conns (MB/s each way; busy % of the proxy's core)"
printf '  %-9s %12s %11s\n' target "MB/s" "core $PROXY_CPU"
for r in "${ROWS[@]}"; do
    if [[ -n ${BULK[$r]:-} ]]; then
        printf '  %-9s %12s %10s%%\n' "$r" "${BULK[$r]}" "${BULK_CPU[$r]}"
    else
        printf '  %-9s %12s\n' "$r" "FAILED"
    fi
done
echo "  (no proxy runs in the 'direct' rows: core $PROXY_CPU busy there is background load, a"
echo "  measure of how quiet the machine was)"
echo

if [[ $HAVE_HAPROXY -eq 1 && " ${ACTIVE[*]} " == *" ringline "* ]]; then
    echo "ringline / haproxy:"
    met=1
    if [[ $HAVE_REDIS -eq 1 ]]; then
        for t in SET GET; do
            if [[ $t == SET ]]; then
                rr=${SET_RPS[ringline]:-} hr=${SET_RPS[haproxy]:-} rp=${SET_P99[ringline]:-} hp=${SET_P99[haproxy]:-}
            else
                rr=${GET_RPS[ringline]:-} hr=${GET_RPS[haproxy]:-} rp=${GET_P99[ringline]:-} hp=${GET_P99[haproxy]:-}
            fi
            if [[ -z $rr || -z $hr ]]; then
                echo "  redis $t: n/a (a run failed)"
                met=0
                continue
            fi
            verdict="met"
            if ! float_ge "$rr" "$hr" || ! float_lt "$rp" "$hp"; then verdict="NOT met"; met=0; fi
            printf '  redis %s: throughput %sx, p99 %s ms vs %s ms (ratio %s) -> target %s\n' \
                "$t" "$(ratio "$rr" "$hr" "" n/a)" "$rp" "$hp" "$(ratio "$rp" "$hp" "" n/a)" "$verdict"
        done
        # Not when the upstream shares the proxy's core: its busy time
        # would count as the proxy's.
        if [[ $UPSTREAM_CPU != "$PROXY_CPU" && -n ${R_PERCORE[ringline]:-} &&
              -n ${R_PERCORE[haproxy]:-} ]]; then
            printf '  redis per proxy core: %s vs %s requests per busy second of core %s (%sx)\n' \
                "${R_PERCORE[ringline]}" "${R_PERCORE[haproxy]}" "$PROXY_CPU" \
                "$(ratio "${R_PERCORE[ringline]}" "${R_PERCORE[haproxy]}" "" n/a)"
            [[ $UPSTREAM_CPU != "$LOAD_CPU" ]] ||
                echo "             (informational: core $LOAD_CPU, client and upstream, bounds the rates)"
        fi
    fi
    if [[ -n ${BULK[ringline]:-} && -n ${BULK[haproxy]:-} ]]; then
        verdict="met"
        float_ge "${BULK[ringline]}" "${BULK[haproxy]}" || { verdict="NOT met"; met=0; }
        printf '  bulk:      throughput %sx (%s vs %s MB/s; p99 not measured) -> target %s\n' \
            "$(ratio "${BULK[ringline]}" "${BULK[haproxy]}" "" n/a)" "${BULK[ringline]}" "${BULK[haproxy]}" "$verdict"
        if [[ -n ${BULK_CPU[ringline]:-} && -n ${BULK_CPU[haproxy]:-} ]]; then
            printf '             proxy core busy %s%% vs %s%%\n' "${BULK_CPU[ringline]}" "${BULK_CPU[haproxy]}"
        fi
    else
        echo "  bulk: n/a (a run failed)"
        met=0
    fi
    if [[ $met -eq 1 ]]; then
        echo "target (>= 1.0x HAProxy throughput, lower p99): met"
    else
        echo "target (>= 1.0x HAProxy throughput, lower p99): NOT met (reported, not enforced)"
    fi
else
    echo "ringline / haproxy: not compared (haproxy or ringline not run)"
fi
exit "$FAILED"
