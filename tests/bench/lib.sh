# lib.sh: helpers the bench_*.sh scripts source: settings checks, ports, readiness, stopping processes, CPU accounting, formatting.
# shellcheck shell=bash
#
# The caller sets BENCH_NAME (its message prefix, e.g. bench_echo) before
# sourcing, and runs under set -euo pipefail.  Functions that pick a port
# or measure a window set globals (PORT, WIN_BUSY, WIN_TOTAL) rather than
# print, because a $(...) subshell would lose the state.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# -- Messages --------------------------------------------------------------------
die() { echo "$BENCH_NAME: $*" >&2; exit 1; }
warn() { echo "$BENCH_NAME: $*" >&2; }

# -- Script setup ----------------------------------------------------------------
# The one argument is the build directory: sets BUILD and REPO (absolute)
# and changes to REPO, since server command lines name scripts/*.lua
# relative to it.
bench_args() {
    [[ $# -eq 1 ]] || die "usage: bash tests/bench/$BENCH_NAME.sh BUILD_DIR"
    # shellcheck disable=SC2034  # the caller reads BUILD and REPO
    BUILD=$(cd "$1" 2>/dev/null && pwd) || die "no such build dir: $1"
    REPO=$(cd "$BENCH_DIR/../.." && pwd)
    cd "$REPO" || die "cannot enter $REPO"
}

# Makes the run directory TMP and the traps: on exit, Ctrl-C and TERM
# included, the caller's stop_procs function stops what it started, then
# TMP goes.
bench_tmp() {
    TMP=$(mktemp -d "/tmp/$BENCH_NAME.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# shellcheck disable=SC2317  # runs from the trap
bench_cleanup() {
    stop_procs
    [[ -z ${NAP_PID:-} ]] || kill "$NAP_PID" 2>/dev/null || true
    rm -rf "$TMP"
}

# -- Settings --------------------------------------------------------------------
is_num() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
is_int() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

# Dies unless MODES (from BENCH_MODES) holds only plain and pipelined
# (one request per round trip, or a batch per write) and is not empty.
# The modes a benchmark knows: plain and pipelined, and any named in $@.
check_modes() {
    local m extra=" $* "
    [[ ${#MODES[@]} -gt 0 ]] || die "BENCH_MODES is empty"
    for m in "${MODES[@]}"; do
        [[ $m == plain || $m == pipelined || $extra == *" $m "* ]] ||
            die "unknown mode '$m' in BENCH_MODES (want plain, pipelined${*:+, $*})"
    done
}

# Sets NCPU; dies unless cores $1 and $2 exist; warns when they are the same
# core ($3 names the two, e.g. "server and wrk").
check_cores() {
    local c list=()
    NCPU=$(nproc)
    [[ $1 =~ ^[0-9]+$ && $1 -lt $NCPU ]] || die "core $1 not available (nproc=$NCPU)"
    # The second may be a taskset list ("1-3", "1,3"): a load generator
    # with threads on several cores, where the machine has them.
    [[ $2 =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || die "bad core list '$2'"
    IFS=, read -ra list <<<"$2"
    for c in "${list[@]}"; do
        local lo=${c%-*} hi=${c#*-} i
        [[ $lo -le $hi ]] || die "bad core range '$c'"
        for ((i = lo; i <= hi; i++)); do
            [[ $i -lt $NCPU ]] || die "core $i not available (nproc=$NCPU)"
            [[ $i != "$1" ]] || warn "warning: $3 share core $1"
        done
    done
}

# -- Ports -----------------------------------------------------------------------
# 0 when something accepts a TCP connection on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_busy() {
    if command -v ss >/dev/null; then
        # Any socket state counts: a lingering TIME_WAIT can make bind fail without SO_REUSEADDR.
        [[ -n $(ss -Htan "( sport = :$1 )" 2>/dev/null) ]]
    else
        port_open "$1"
    fi
}

# Advances PORT to the next free port; every run gets a fresh one so no
# run inherits the previous server's TIME_WAIT sockets.
next_port() {
    PORT=$((PORT + 1))
    while port_busy "$PORT"; do
        PORT=$((PORT + 1))
        [[ $PORT -lt 65000 ]] || die "no free port found"
    done
}

# 0 once process $1 is alive and PROBE ($3, a function given the port;
# default port_open) succeeds on port $2; 1 if the process dies or 10 s pass.
wait_ready() {
    local pid=$1 port=$2 probe=${3:-port_open} i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        "$probe" "$port" && return 0
        sleep 0.05
    done
    return 1
}

# The words $2... rotated left by $1, one a line: repeat N of a benchmark
# runs the servers in this order, so none always runs first.
rotated() {
    local r=$1 k
    shift
    for ((k = 0; k < $#; k++)); do
        echo "${@:$(((k + r) % $# + 1)):1}"
    done
}

# -- Processes -------------------------------------------------------------------
# Process $1 and its children, one a line (nginx: the master and its worker;
# a subshell and the command it runs).
proc_tree() {
    echo "$1"
    cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+$' || true
}

# SIGTERM to every pid given (all at once, so they shut down in parallel),
# then up to 5 s for each to go before SIGKILL.  Always returns 0: callers
# that care whether a server survived check kill -0 before stopping it.
stop_pids() {
    local p i
    for p in "$@"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "$@"; do
        for ((i = 0; i < 100; i++)); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$p" 2>/dev/null; then
            warn "process $p ignored SIGTERM, killing"
            kill -KILL "$p" 2>/dev/null || true
        fi
        wait "$p" 2>/dev/null || true
    done
}

# stop_pids on process $1, then SIGKILL to the children it had: an nginx
# worker must not outlive its master and hold the port.
kill_tree() {
    local kids p
    kids=$(proc_tree "$1" | tail -n +2 | tr '\n' ' ')
    stop_pids "$1"
    for p in $kids; do
        kill -KILL "$p" 2>/dev/null || true
    done
}

# Sleeps $1 seconds in the background so a SIGINT/SIGTERM trap runs at once,
# not after the sleep (and bench_cleanup ends the sleep).
nap() {
    sleep "$1" &
    NAP_PID=$!
    wait "$NAP_PID"
    NAP_PID=""
}

# -- CPU accounting --------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
now_ns() { date +%s%N; }

# utime + stime clock ticks of process $1 (all its threads); 0 once it is gone.
proc_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# proc_ticks summed over process $1 and its children (nginx master and worker).
tree_ticks() {
    local total=0 p
    for p in $(proc_tree "$1"); do
        total=$((total + $(proc_ticks "$p")))
    done
    echo "$total"
}

# "busy total tasks" jiffies of core $1: busy covers every process, thread
# and softirq that ran there (other load included); tasks is user + nice +
# system, the processes' share, without interrupts.
core_jiffies() {
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $2 + $3 + $4 }' /proc/stat
}

# While a load generator runs $2 warmup + $3 measured seconds in the
# background: samples core $1 inside the measured window (past the warmup,
# short of the end, where connections open and close) and sets WIN_BUSY and
# WIN_TOTAL to the busy and total jiffies in between.
core_window() {
    local b0 t0 b1 t1
    nap "$(awk -v w="$2" 'BEGIN { print w + 0.2 }')"
    read -r b0 t0 _ < <(core_jiffies "$1")
    nap "$(awk -v d="$3" 'BEGIN { s = d - 0.4; print (s > 0.1 ? s : 0.1) }')"
    read -r b1 t1 _ < <(core_jiffies "$1")
    # shellcheck disable=SC2034  # the caller reads them
    WIN_BUSY=$((b1 - b0)) WIN_TOTAL=$((t1 - t0))
}

# $1 as a percentage of $2 (jiffies of one core), $3 decimals (default 0).
pct() {
    awk -v a="$1" -v b="$2" -v d="${3:-0}" 'BEGIN { printf "%." d "f", (b > 0 ? 100 * a / b : 0) }'
}

# CPU use of a process in percent of one core: $1 clock ticks over $2 ns.
ticks_pct() {
    awk -v t="$1" -v hz="$CLK_TCK" -v ns="$2" 'BEGIN { printf "%.0f", (ns > 0 ? 100 * t / hz / (ns / 1e9) : 0) }'
}

# Percent of a core's $3 jiffies that processes other than the server used:
# its tasks jiffies $1 minus the server's ticks $2 (both USER_HZ).  More
# than a little means another load disturbed the run.
other_pct() {
    awk -v k="$1" -v s="$2" -v t="$3" 'BEGIN { o = (t > 0 ? 100 * (k - s) / t : 0); printf "%.0f", (o < 0 ? 0 : o) }'
}

# Rate $1 divided by the server's CPU share $2 (percent of one core): what
# one core of the server does per second of its own CPU time, the per-core
# measure when the server does not saturate its core.  Empty if $2 <= 0.
per_cpu_second() {
    awk -v r="$1" -v c="$2" 'BEGIN { if (c > 0) printf "%.0f", r / (c / 100); else print "" }'
}

# $1 requests done in $2 ticks (USER_HZ) of CPU time: requests per
# CPU-second.  Empty if $2 <= 0.
per_cpu_ticks() {
    awk -v n="$1" -v t="$2" -v hz="$CLK_TCK" 'BEGIN { if (t > 0) printf "%.0f", n / (t / hz); else print "" }'
}

# -- Numbers and formatting ------------------------------------------------------
float_gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }
float_ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
float_lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

# $1 / $2 to two decimals followed by $3 (e.g. "x"); $4 (default "-") when
# either is empty or $2 is not positive.
ratio() {
    awk -v a="$1" -v b="$2" -v s="${3:-}" -v none="${4:--}" \
        'BEGIN { if (a == "" || b == "" || b <= 0) print none; else printf "%.2f%s\n", a / b, s }'
}

# Microseconds as "850us" or "1.23ms"; "-" when empty.
fmt_us() {
    [[ -n $1 ]] || { echo "-"; return; }
    awk -v u="$1" 'BEGIN { if (u >= 1000) printf "%.2fms", u / 1000; else printf "%.0fus", u }'
}

# The value of field NAME=VALUE $1 in line $2 (a load generator's RESULT line).
field() { sed -n "s/.* $1=\\([^ ]*\\).*/\\1/p" <<<" $2"; }

# -- Header ----------------------------------------------------------------------
# The date, kernel and cpu lines of a report header, labels padded to $1
# columns.
host_lines() {
    printf '%-*s%s\n' "$1" "date:" "$(date '+%Y-%m-%d %H:%M:%S %z')" \
        "$1" "kernel:" "$(uname -r)" "$1" "cpu:" "$(cpu_model) (nproc=$NCPU)"
}

cpu_model() {
    local m
    m=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "${m:-unknown}"
}

# The checkout's short commit, " (dirty)" when it has uncommitted changes:
# numbers from a dirty tree are not that commit's.
git_commit() {
    local c
    c=$(git rev-parse --short HEAD 2>/dev/null || echo none)
    [[ -z $(git status --porcelain 2>/dev/null) ]] || c+=" (dirty)"
    echo "$c"
}
