#!/usr/bin/env bash
# bench_http.sh: pinned HTTP benchmark with wrk: ringline scripts/http.lua
# against nginx with lua-nginx-module and nginx `return 200`, one request per
# round trip and 16 pipelined requests per write; and (mode static) a 64 KiB
# file from /static/, ringline's conn:send_file against nginx's sendfile; and
# (mode proxy) scripts/http_proxy.lua against nginx proxy_pass with an
# upstream keep-alive pool (keepalive 32), both in front of the same nginx
# `return 200` upstream on the client's core; and (mode tls, only when
# BENCH_MODES names it) HTTPS: ringline scripts/http.lua on a tls:// listener
# against nginx `listen ... ssl` with the same lua content handler, TLS 1.3,
# TLS_AES_128_GCM_SHA256 and a throwaway self-signed certificate made with
# openssl in the run directory; four measurements: tls-ka (keep-alive, GET /,
# wrk -c BENCH_CONNECTIONS), tls-hs (full handshakes: -H "Connection: close",
# a new connection and handshake per request), tls-bulk (GET
# /static/1m.bin, BENCH_TLS_BULK_SIZE bytes, -c BENCH_TLS_BULK_CONNECTIONS)
# and tls-rs (resumed handshakes: openssl s_time -reuse, one connection at a
# time, each resuming the TLS 1.3 session of the ticket the last one got).
#
# Usage: bash tests/bench/bench_http.sh BUILD_DIR
#   BUILD_DIR holds ringline.
# Needs: wrk, nginx-light, libnginx-mod-http-lua, taskset (util-linux);
#   apt-get install wrk nginx-light libnginx-mod-http-lua
#   (tls: openssl, the command line, too, and its s_time for tls-rs; curl is
#   used when there)
#   (never libluajit-5.1-dev: it conflicts with libnginx-mod-http-lua).
# Environment (all optional):
#   BENCH_SECONDS=5        measured seconds per wrk run
#   BENCH_WARMUP=1         warmup seconds before each measured run (same load, not measured)
#   BENCH_REPEAT=1         runs per server and mode; servers alternate, best req/s kept
#   BENCH_CONNECTIONS=50   wrk -c
#   BENCH_THREADS=1        wrk -t
#   BENCH_DEPTH=16         requests per write in the pipelined mode
#   BENCH_SERVERS="ringline nginx-lua nginx-return"
#   BENCH_MODES="plain pipelined static proxy"   static: GET /static/64k.bin (BENCH_FILE_SIZE bytes);
#                          proxy: GET / through a reverse proxy (nginx-lua is not run);
#                          tls: the same as "tls-ka tls-hs tls-bulk tls-rs" (nginx return is not run;
#                          not in the default list; each of the three may be named alone)
#   BENCH_FILE_SIZE=65536
#   BENCH_TLS_KEY=rsa      the certificate's key: rsa (RSA-2048) or p256 (ECDSA P-256)
#   BENCH_TLS_BULK_SIZE=1048576   BENCH_TLS_BULK_CONNECTIONS=10   tls-bulk's body and wrk -c
#   BENCH_SERVER_CPU=0 BENCH_CLIENT_CPU=1   cores for the server and for wrk; the
#                          client may be a list (BENCH_THREADS=3 BENCH_CLIENT_CPU=1-3)
#   BENCH_PORT_BASE=17400  first port tried; each run gets a fresh free one
#   BENCH_STRICT=0         1: exit 1 when a target is not met
#   RINGLINE=BUILD_DIR/ringline   RINGLINE_ARGS=""   extra ringline options
set -euo pipefail

BENCH_NAME=bench_http
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_args "$@"

DURATION=${BENCH_SECONDS:-5}
WARMUP=${BENCH_WARMUP:-1}
REPEAT=${BENCH_REPEAT:-1}
CONNS=${BENCH_CONNECTIONS:-50}
THREADS=${BENCH_THREADS:-1}
DEPTH=${BENCH_DEPTH:-16}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
PORT=${BENCH_PORT_BASE:-17400}
STRICT=${BENCH_STRICT:-0}
read -ra SERVERS <<<"${BENCH_SERVERS:-ringline nginx-lua nginx-return}"
read -ra MODES <<<"${BENCH_MODES:-plain pipelined static proxy}"
# "tls" is shorthand for its four measurements.
modes=()
for m in "${MODES[@]}"; do
    if [[ $m == tls ]]; then modes+=(tls-ka tls-hs tls-bulk tls-rs); else modes+=("$m"); fi
done
MODES=("${modes[@]}")
FILE_SIZE=${BENCH_FILE_SIZE:-65536}
TLS_KEY=${BENCH_TLS_KEY:-rsa}
TLS_BULK_SIZE=${BENCH_TLS_BULK_SIZE:-1048576}
TLS_BULK_CONNS=${BENCH_TLS_BULK_CONNECTIONS:-10}
TLS_SUITE=TLS_AES_128_GCM_SHA256
RINGLINE=${RINGLINE:-$BUILD/ringline}
read -ra RL_EXTRA <<<"${RINGLINE_ARGS:-}"
PIPELINE_LUA=$REPO/tests/bench/pipeline.lua
NGX_MODDIR=/usr/lib/nginx/modules
INSTALL_HINT="apt-get install wrk nginx-light libnginx-mod-http-lua"

# -- Settings and tools --------------------------------------------------------
is_int "$DURATION" || die "BENCH_SECONDS must be a positive whole number (wrk -d), got '$DURATION'"
is_num "$WARMUP" || die "BENCH_WARMUP must be a number, got '$WARMUP'"
is_int "$REPEAT" || die "BENCH_REPEAT must be a positive integer, got '$REPEAT'"
is_int "$CONNS" || die "BENCH_CONNECTIONS must be a positive integer, got '$CONNS'"
is_int "$THREADS" || die "BENCH_THREADS must be a positive integer, got '$THREADS'"
is_int "$DEPTH" || die "BENCH_DEPTH must be a positive integer, got '$DEPTH'"
[[ ${#SERVERS[@]} -gt 0 ]] || die "BENCH_SERVERS is empty"
check_modes static proxy tls tls-ka tls-hs tls-bulk tls-rs
is_int "$FILE_SIZE" || die "BENCH_FILE_SIZE must be a positive integer, got '$FILE_SIZE'"
is_tls() { [[ $1 == tls-* ]]; }
any_tls=0
for m in "${MODES[@]}"; do
    if is_tls "$m"; then any_tls=1; fi
done
if [[ $any_tls -eq 1 ]]; then
    [[ $TLS_KEY == rsa || $TLS_KEY == p256 ]] || die "BENCH_TLS_KEY must be rsa or p256, got '$TLS_KEY'"
    is_int "$TLS_BULK_SIZE" || die "BENCH_TLS_BULK_SIZE must be a positive integer, got '$TLS_BULK_SIZE'"
    is_int "$TLS_BULK_CONNS" || die "BENCH_TLS_BULK_CONNECTIONS must be a positive integer, got '$TLS_BULK_CONNS'"
    command -v openssl >/dev/null || die "openssl (the command line) not found: apt-get install openssl"
fi

# Runs that are not made: proxy mode has no nginx+lua, the tls modes no
# nginx return (the lua handler is the comparison).
skip_run() {
    [[ $2 == proxy && $1 == nginx-lua ]] && return 0
    is_tls "$2" && [[ $1 == nginx-return ]] && return 0
    return 1
}

check_cores "$SERVER_CPU" "$CLIENT_CPU" "server and wrk"
command -v taskset >/dev/null || die "taskset not found: apt-get install util-linux"
command -v wrk >/dev/null || die "wrk not found: $INSTALL_HINT"

NGINX=""
need_nginx=0
need_lua=0
for s in "${SERVERS[@]}"; do
    case $s in
        ringline)
            [[ -x $RINGLINE ]] || die "missing $RINGLINE (run make first)"
            [[ -f scripts/http.lua ]] || die "missing $REPO/scripts/http.lua" ;;
        nginx-lua) need_nginx=1; need_lua=1 ;;
        nginx-return) need_nginx=1 ;;
        *) die "unknown server '$s' in BENCH_SERVERS (want ringline, nginx-lua, nginx-return)" ;;
    esac
done
if [[ $need_nginx -eq 1 ]]; then
    NGINX=$(command -v nginx || true)
    [[ -n $NGINX ]] || { [[ -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx; } || true
    [[ -n $NGINX ]] || die "nginx not found: $INSTALL_HINT"
fi
if [[ $need_lua -eq 1 ]]; then
    for m in ndk_http_module.so ngx_http_lua_module.so; do
        [[ -f $NGX_MODDIR/$m ]] || die "missing $NGX_MODDIR/$m (lua-nginx-module): $INSTALL_HINT"
    done
fi

label_of() {
    if [[ $1 == nginx-return && ${2:-} == proxy ]]; then
        echo "nginx proxy"
        return
    fi
    case $1 in
        ringline) echo "ringline" ;;
        nginx-lua) echo "nginx+lua" ;;
        nginx-return) echo "nginx return" ;;
    esac
}

# -- Processes ------------------------------------------------------------------
SRV_PID=""
WRK_PID=""
# shellcheck disable=SC2317  # runs from the exit trap
stop_procs() {
    # The subshell and wrk, its child (one pid a word).
    # shellcheck disable=SC2046
    [[ -z $WRK_PID ]] || stop_pids $(proc_tree "$WRK_PID")
    [[ -z $SRV_PID ]] || kill_tree "$SRV_PID"
    [[ -z ${UP_PID:-} ]] || kill_tree "$UP_PID"
}
bench_tmp
chmod 755 "$TMP"       # nginx workers run as nobody when started by root
STATIC_ROOT=$TMP/root
mkdir -p "$STATIC_ROOT"
head -c "$FILE_SIZE" /dev/urandom >"$STATIC_ROOT/64k.bin"
TLS_CERT=$TMP/tls/cert.pem
TLS_KEYFILE=$TMP/tls/key.pem
if [[ " ${MODES[*]} " == *" tls-bulk "* ]]; then
    head -c "$TLS_BULK_SIZE" /dev/urandom >"$STATIC_ROOT/1m.bin"
fi
chmod -R a+rX "$STATIC_ROOT"
if [[ $any_tls -eq 1 ]]; then
    # A throwaway self-signed certificate for localhost, made here and gone
    # with the run directory.
    mkdir -p "$TMP/tls"
    if [[ $TLS_KEY == rsa ]]; then
        keyopt=(-newkey rsa:2048)
    else
        keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
    fi
    openssl req -x509 "${keyopt[@]}" -nodes -days 2 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$TLS_KEYFILE" -out "$TLS_CERT" >"$TMP/tls/openssl.log" 2>&1 ||
        { cat "$TMP/tls/openssl.log" >&2; die "openssl req could not make the test certificate"; }
    chmod 644 "$TLS_CERT" "$TLS_KEYFILE"   # nginx reads them as root; throwaway
fi


# Writes an nginx.conf for server $1 on port $2 into directory $3; $4 "tls":
# an ssl listener (TLS 1.3, $TLS_SUITE, the test certificate).
nginx_conf() {
    local kind=$1 port=$2 dir=$3 tls=${4:-} content
    mkdir -p "$dir"
    if [[ $kind == nginx-lua ]]; then
        content='content_by_lua_block { ngx.print("hello world\n") }'
    elif [[ $kind == nginx-proxy ]]; then
        content='proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'
    else
        content='return 200 "hello world\n";'
    fi
    {
        echo "daemon off;"
        echo "worker_processes 1;"
        echo "pid $dir/nginx.pid;"
        echo "error_log $dir/error.log warn;"
        if [[ $kind == nginx-lua ]]; then
            echo "load_module $NGX_MODDIR/ndk_http_module.so;"
            echo "load_module $NGX_MODDIR/ngx_http_lua_module.so;"
        fi
        echo "events { worker_connections 4096; }"
        echo "http {"
        echo "    access_log off;"
        # Keep every temp path in the run directory, not /var/lib/nginx.
        for t in client_body proxy fastcgi uwsgi scgi; do
            echo "    ${t}_temp_path $dir/$t;"
        done
        # nginx closes a keep-alive connection after 1000 requests by
        # default; ringline never does.  Same rules for both.
        echo "    keepalive_requests 1000000000;"
        if [[ $kind == nginx-proxy ]]; then
            echo "    upstream up { server 127.0.0.1:$UP_PORT; keepalive 32; keepalive_requests 1000000000; }"
        fi
        echo "    server {"
        if [[ $tls == tls ]]; then
            echo "        listen 127.0.0.1:$port ssl;"
            echo "        ssl_certificate $TLS_CERT;"
            echo "        ssl_certificate_key $TLS_KEYFILE;"
            echo "        ssl_protocols TLSv1.3;"
            echo "        ssl_conf_command Ciphersuites $TLS_SUITE;"
            # ringline sends one TLS 1.3 ticket after a full handshake
            # (OpenSSL's default is two): the same work for both.
            echo "        ssl_conf_command NumTickets 1;"
            # Resumption by ticket (tls-rs): nginx's default, said outright.
            # OpenSSL sends NumTickets fresh tickets after a resumed
            # handshake too, as ringline sends one on every resumption.
            echo "        ssl_session_tickets on;"
        else
            echo "        listen 127.0.0.1:$port;"
        fi
        # Static files as nginx serves them at its best: sendfile, no copy.
        echo "        location /static/ {"
        echo "            alias $STATIC_ROOT/;"
        echo "            sendfile on; tcp_nopush on;"
        echo "        }"
        echo "        location / {"
        echo "            default_type text/plain;"
        echo "            $content"
        echo "        }"
        echo "    }"
        echo "}"
    } >"$dir/nginx.conf"
}

# Sets CMD to the command line of server $1 on port $2 in mode $3 (nginx:
# writes its conf).
server_cmd() {
    local dir
    if [[ ${3:-} == proxy ]]; then
        case $1 in
            ringline)
                CMD=(env RINGLINE_HTTP_PROXY_UPSTREAMS="127.0.0.1:$UP_PORT" "$RINGLINE" --workers 1 \
                    --listen "tcp://127.0.0.1:$2" "${RL_EXTRA[@]}" scripts/http_proxy.lua) ;;
            *)
                dir="$TMP/$1.proxy.$2"
                nginx_conf nginx-proxy "$2" "$dir"
                CMD=("$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log") ;;
        esac
        return
    fi
    if is_tls "${3:-}"; then
        case $1 in
            ringline)
                CMD=(env RINGLINE_HTTP_ROOT="$STATIC_ROOT" "$RINGLINE" --workers 1 --listen "tls://127.0.0.1:$2" \
                    --tls-cert "$TLS_CERT" --tls-key "$TLS_KEYFILE" --tls-ciphersuites "$TLS_SUITE" \
                    "${RL_EXTRA[@]}" scripts/http.lua) ;;
            *)
                dir="$TMP/$1.tls.$2"
                nginx_conf "$1" "$2" "$dir" tls
                CMD=("$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log") ;;
        esac
        return
    fi
    case $1 in
        ringline)
            CMD=(env RINGLINE_HTTP_ROOT="$STATIC_ROOT" "$RINGLINE" --workers 1 --listen "tcp://127.0.0.1:$2" "${RL_EXTRA[@]}" scripts/http.lua) ;;
        nginx-lua | nginx-return)
            dir="$TMP/$1.$2"
            nginx_conf "$1" "$2" "$dir"
            CMD=("$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log") ;;
    esac
}

# The response body of GET / on port $1.
# shellcheck disable=SC2317  # called through answers_hello, the wait_ready probe
fetch_hello() {
    if command -v curl >/dev/null; then
        curl -s --max-time 2 "http://127.0.0.1:$1/" 2>/dev/null || true
    else
        (
            exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
            printf 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
            timeout 2 cat <&3 | sed '1,/^\r$/d'
        ) 2>/dev/null || true
    fi
}

# wait_ready probe: 0 when the server on port $1 answers GET / with "hello world".
# shellcheck disable=SC2317  # called by wait_ready
answers_hello() {
    port_open "$1" && [[ $(fetch_hello "$1") == "hello world" ]]
}

# The response body of GET / over TLS on port $1 (certificate not checked:
# it is the throwaway one).
# shellcheck disable=SC2317  # called through answers_hello_tls
fetch_hello_tls() {
    if command -v curl >/dev/null; then
        curl -sk --max-time 2 "https://127.0.0.1:$1/" 2>/dev/null || true
    else
        printf 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
            timeout 2 openssl s_client -quiet -connect "127.0.0.1:$1" -servername localhost 2>/dev/null |
            sed '1,/^\r$/d' || true
    fi
}

# shellcheck disable=SC2317  # called by wait_ready
answers_hello_tls() {
    port_open "$1" && [[ $(fetch_hello_tls "$1") == "hello world" ]]
}

# What a TLS handshake with the server on port $1 settles: "TLSv1.3
# TLS_AES_128_GCM_SHA256 X25519" (version, suite, key exchange).
tls_params() {
    local out ver suite grp
    out=$(openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null 2>&1 || true)
    ver=$(sed -n 's/^New, \([^,]*\), Cipher is \(.*\)$/\1/p' <<<"$out" | head -n1)
    suite=$(sed -n 's/^New, \([^,]*\), Cipher is \(.*\)$/\2/p' <<<"$out" | head -n1)
    grp=$(sed -n 's/^\(Server\|Peer\) Temp Key: \([^,]*\).*/\2/p' <<<"$out" | head -n1)
    echo "${ver:-?} ${suite:-?} ${grp:-?}"
}

# Runs openssl s_time -reuse (tls-rs; port $1, seconds $2) into $3; writes
# "cpu_seconds wall_seconds" to $3.cpu.  One connection at a time: the first
# makes a full handshake (before s_time starts its clock), then each
# connection resumes the session of the ticket its predecessor got (s_time
# keeps its SSL object, and with it the newest session), sends
# "GET / HTTP/1.0" and reads to the server's close.  s_time prints a
# character a connection, "r" for a resumed one, then "N connections in T
# real seconds"; T is whole seconds and s_time runs between -time and -time+1
# seconds, so the rate comes from the wall time measured here.
run_stime() {
    local port=$1 secs=$2 out=$3 t0 t1 rc=0
    t0=$(now_ns)
    (
        taskset -c "$CLIENT_CPU" openssl s_time -connect "127.0.0.1:$port" -reuse -tls1_3 \
            -ciphersuites "$TLS_SUITE" -time "$secs" -www / >"$out" 2>&1 || exit $?
        times >"$out.times"
    ) &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    t1=$(now_ns)
    awk -v w="$(((t1 - t0) / 1000))" 'NR == 2 {
            n = split($0, f, " "); s = 0
            for (i = 1; i <= n; i++) { split(f[i], ms, "m"); sub(/s$/, "", ms[2]); s += ms[1] * 60 + ms[2] }
            printf "%.3f %.3f\n", s, w / 1e6 }' "$out.times" >"$out.cpu" 2>/dev/null || true
    return $rc
}

# Runs wrk (mode $1, port $2, seconds $3) into $4; writes "cpu_seconds wall_seconds" to $4.cpu.
# tls-rs: openssl s_time instead (run_stime).
run_wrk() {
    local mode=$1 port=$2 secs=$3 out=$4 t0 t1 rc=0 conns=$CONNS
    if [[ $mode == tls-rs ]]; then
        run_stime "$port" "$secs" "$out"
        return
    fi
    [[ $mode == tls-bulk ]] && conns=$TLS_BULK_CONNS
    local args=(-t"$THREADS" -c"$conns" -d"${secs}s" --latency)
    local url="http://127.0.0.1:$port/"
    [[ $mode == pipelined ]] && args+=(-s "$PIPELINE_LUA")
    [[ $mode == static ]] && url="http://127.0.0.1:$port/static/64k.bin"
    is_tls "$mode" && url="https://127.0.0.1:$port/"
    [[ $mode == tls-hs ]] && args+=(-H "Connection: close")
    [[ $mode == tls-bulk ]] && url="https://127.0.0.1:$port/static/1m.bin"
    t0=$(now_ns)
    # `times` in the subshell reports the CPU time of its one child, wrk
    # (taskset execs it).
    (
        PIPELINE_DEPTH=$DEPTH PIPELINE_CONNECTIONS=$CONNS \
            taskset -c "$CLIENT_CPU" wrk "${args[@]}" "$url" \
            >"$out" 2>&1 || exit $?
        times >"$out.times"
    ) &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    t1=$(now_ns)
    awk -v w="$(((t1 - t0) / 1000))" 'NR == 2 {
            n = split($0, f, " "); s = 0
            for (i = 1; i <= n; i++) { split(f[i], ms, "m"); sub(/s$/, "", ms[2]); s += ms[1] * 60 + ms[2] }
            printf "%.3f %.3f\n", s, w / 1e6 }' "$out.times" >"$out.cpu" 2>/dev/null || true
    return $rc
}

# wrk latency ("123.45us", "1.23ms", "2.00s") in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.1f", v }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.1f", v * 1000 }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.1f", v * 60e6 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.1f", v * 1e6 }
        else print "" }'
}

declare -A RPS P50 P99 WCPU SCPU EFF CORE NOTE FAIL TLSP
FAILED=0

# One measured run of server $1 in mode $2; keeps the best req/s.
run_one() {
    local srv=$1 mode=$2 key="$1|$2" log out rc=0 s0 s1 t0 t1 rps p50 p99 errs non2xx scpu wcpu note=""
    local line batches total b0 b1 j0 j1 k0 k1 core other probe=answers_hello tp got
    skip_run "$srv" "$mode" && return 0
    is_tls "$mode" && probe=answers_hello_tls
    next_port
    server_cmd "$srv" "$PORT" "$mode"
    log="$TMP/$srv.$PORT.log"
    out="$TMP/wrk.$srv.$mode.$PORT"
    taskset -c "$SERVER_CPU" "${CMD[@]}" >"$log" 2>&1 &
    SRV_PID=$!
    if ! wait_ready "$SRV_PID" "$PORT" "$probe"; then
        warn "$(label_of "$srv" "$mode") did not start (or did not answer GET / with hello world) on port $PORT: ${CMD[*]}"
        tail -n 20 "$log" >&2 || true
        [[ $srv == ringline ]] || tail -n 20 "$TMP/$srv.$PORT/error.log" >&2 2>/dev/null || true
        kill_tree "$SRV_PID"
        SRV_PID=""
        FAIL[$key]="no-start"
        FAILED=1
        return 0
    fi
    if is_tls "$mode"; then
        # Both must settle the same handshake, and serve the whole file.
        tp=$(tls_params "$PORT")
        TLSP[$srv]=$tp
        [[ $tp == "TLSv1.3 $TLS_SUITE "* ]] || note+="negotiated $tp, not TLSv1.3 $TLS_SUITE; "
        if [[ $mode == tls-bulk ]] && command -v curl >/dev/null; then
            got=$(curl -sk --max-time 5 -o /dev/null -w '%{http_code} %{size_download}' \
                "https://127.0.0.1:$PORT/static/1m.bin" 2>/dev/null || true)
            [[ $got == "200 $TLS_BULK_SIZE" ]] ||
                note+="GET /static/1m.bin gave '$got', not '200 $TLS_BULK_SIZE'; "
        fi
    fi
    if float_gt "$WARMUP" 0; then
        run_wrk "$mode" "$PORT" "$(awk -v w="$WARMUP" 'BEGIN { printf "%d", (w < 1 ? 1 : w) }')" \
            "$out.warmup" || true
    fi
    s0=$(tree_ticks "$SRV_PID")
    read -r b0 j0 k0 < <(core_jiffies "$SERVER_CPU")
    t0=$(now_ns)
    run_wrk "$mode" "$PORT" "$DURATION" "$out" || rc=$?
    t1=$(now_ns)
    read -r b1 j1 k1 < <(core_jiffies "$SERVER_CPU")
    s1=$(tree_ticks "$SRV_PID")
    if ! kill -0 "$SRV_PID" 2>/dev/null; then
        warn "$(label_of "$srv" "$mode") died during the run ($mode)"
        tail -n 20 "$log" >&2 || true
        rc=1
    fi
    kill_tree "$SRV_PID"
    SRV_PID=""

    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    if [[ $mode == tls-rs ]]; then
        # Resumed handshakes per second: the "r" connections over the wall
        # time; no latency (s_time measures none).
        local conns_n resumed others wall bpc
        conns_n=$(awk '/ connections in .* real seconds/ { print $1; exit }' "$out")
        bpc=$(sed -n 's/.* real seconds, \([0-9]*\) bytes read per connection.*/\1/p' "$out" | head -n1)
        read -r resumed others < <(awk '/^[rt3*]+$/ { n = length($0); k = gsub(/r/, ""); r += k; o += n - k }
            END { print r + 0, o + 0 }' "$out")
        wall=$(awk '{ print $2 }' "$out.cpu" 2>/dev/null || true)
        rps=""
        if [[ -n $conns_n && -n $wall ]]; then
            rps=$(awk -v n="$resumed" -v w="$wall" 'BEGIN { if (w > 0) printf "%.2f", n / w }')
        fi
        [[ -z $conns_n || $others -eq 0 ]] || note+="$others of $conns_n connections not resumed; "
        [[ -z $conns_n || $resumed -gt 0 ]] || note+="no connection resumed; "
        [[ -z $bpc || $bpc -gt 0 ]] || note+="0 bytes read per connection; "
        p50=""
        p99=""
    elif [[ $mode == pipelined ]]; then
        # wrk's own percentiles are wrong with pipelining (see pipeline.lua):
        # use the per-batch histogram pipeline.lua rebuilds.
        line=$(grep -m1 '^PIPELINE_LATENCY' "$out" || true)
        p50=$(field p50_us "$line")
        p99=$(field p99_us "$line")
        batches=$(field batches "$line")
        total=$(awk '/ requests in / { print $1; exit }' "$out")
        if [[ -z $p99 ]]; then
            note+="no per-batch latency (${line:-no PIPELINE_LATENCY line}); "
        elif [[ -n $total ]] && ! awk -v b="$batches" -v t="$total" -v d="$DEPTH" \
            'BEGIN { e = t / d; exit !(b >= 0.99 * e - 50 && b <= 1.01 * e + 50) }'; then
            note+="per-batch latency has $batches batches for $total responses; "
        fi
    else
        p50=$(to_us "$(awk '$1 == "50%" { print $2; exit }' "$out")")
        p99=$(to_us "$(awk '$1 == "99%" { print $2; exit }' "$out")")
    fi
    if [[ $rc -ne 0 || -z $rps || ( $mode != pipelined && $mode != tls-rs && ( -z $p50 || -z $p99 ) ) ]]; then
        warn "$([[ $mode == tls-rs ]] && echo "openssl s_time" || echo wrk) failed against $(label_of "$srv" "$mode") ($mode, rc=$rc):"
        cat "$out" >&2 || true
        FAIL[$key]="FAIL"
        FAILED=1
        return 0
    fi
    errs=$(awk '/Socket errors:/ { sub(/^ *Socket errors: */, ""); print }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    [[ -z $errs ]] || note+="socket errors: $errs; "
    [[ -z $non2xx ]] || note+="non-2xx: $non2xx; "
    scpu=$(ticks_pct "$((s1 - s0))" "$((t1 - t0))")
    wcpu=$(awk '{ printf "%.0f", ($2 > 0 ? 100 * $1 / $2 : 0) }' "$out.cpu" 2>/dev/null || true)
    core=$(pct "$((b1 - b0))" "$((j1 - j0))")
    other=$(other_pct "$((k1 - k0))" "$((s1 - s0))" "$((j1 - j0))")
    if [[ $other -gt 10 ]]; then
        note+="other processes used ${other}% of core $SERVER_CPU; "
    fi
    printf '  %-13s %-9s run: %12s req/s  p50 %9s  p99 %9s  wrk CPU %4s%%  server CPU %4s%%  core %s busy %4s%%%s\n' \
        "$(label_of "$srv" "$mode")" "$mode" "$rps" "$(fmt_us "$p50")" "$(fmt_us "$p99")" "${wcpu:--}" "$scpu" \
        "$SERVER_CPU" "$core" "${note:+  (${note%; })}" >&2
    if [[ -z ${RPS[$key]:-} ]] || float_gt "$rps" "${RPS[$key]}"; then
        RPS[$key]=$rps
        P50[$key]=$p50
        P99[$key]=$p99
        WCPU[$key]=${wcpu:--}
        SCPU[$key]=$scpu
        EFF[$key]=$(per_cpu_second "$rps" "$scpu")
        CORE[$key]=$core
        NOTE[$key]=$note
    fi
}

# The upstream of proxy mode: nginx return 200, one worker on the client's
# core, for the whole run.
UP_PORT=""
UP_PID=""
if [[ " ${MODES[*]} " == *" proxy "* ]]; then
    [[ -n $NGINX ]] || NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    [[ -x $NGINX ]] || die "nginx not found (proxy mode's upstream): $INSTALL_HINT"
    next_port
    UP_PORT=$PORT
    nginx_conf nginx-return "$UP_PORT" "$TMP/upstream"
    taskset -c "$CLIENT_CPU" "$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" \
        -e "$TMP/upstream/error.log" >"$TMP/upstream.log" 2>&1 &
    UP_PID=$!
    wait_ready "$UP_PID" "$UP_PORT" answers_hello || die "the proxy mode's upstream nginx did not start"
fi

# -- Header -----------------------------------------------------------------------
echo "== ringline HTTP benchmark =="
host_lines 13
echo "commit:      $(git_commit)"
echo "wrk:         $(wrk -v 2>&1 | head -n1 | sed 's/ Copyright.*//')"
[[ -z $NGINX ]] || echo "nginx:       $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
[[ $need_lua -eq 0 ]] || echo "nginx lua:   $(dpkg-query -W -f='libnginx-mod-http-lua ${Version}' libnginx-mod-http-lua 2>/dev/null || echo "$NGX_MODDIR/ngx_http_lua_module.so")"
[[ ! -x $RINGLINE ]] || echo "ringline:    $("$RINGLINE" --version 2>&1 | head -n1)"
echo "pinning:     server taskset -c $SERVER_CPU (nginx master and worker), wrk taskset -c $CLIENT_CPU"
echo "settings:    wrk -t$THREADS -c$CONNS -d${DURATION}s --latency; warmup ${WARMUP}s; repeat $REPEAT (best req/s of N, servers alternate)"
echo "pipelined:   PIPELINE_DEPTH=$DEPTH PIPELINE_CONNECTIONS=$CONNS wrk ... -s tests/bench/pipeline.lua: $DEPTH x GET / HTTP/1.1 (Host: x) per write"
echo "servers:"
for s in "${SERVERS[@]}"; do
    case $s in
        ringline) printf '  %-13s taskset -c %s %s\n' "$(label_of "$s")" "$SERVER_CPU" \
            "$RINGLINE --workers 1 --listen tcp://127.0.0.1:PORT ${RL_EXTRA[*]} scripts/http.lua" ;;
        nginx-lua) printf '  %-13s %s\n' "$(label_of "$s")" \
            "1 worker, lua-nginx-module: content_by_lua_block { ngx.print(\"hello world\\n\") }" ;;
        nginx-return) printf '  %-13s %s\n' "$(label_of "$s")" "1 worker, return 200 \"hello world\\n\"" ;;
    esac
done
if [[ " ${MODES[*]} " == *" proxy "* ]]; then
    echo "proxy mode:  ringline scripts/http_proxy.lua (RINGLINE_HTTP_PROXY_UPSTREAMS) vs nginx proxy_pass http://up;"
    echo "             proxy_http_version 1.1; upstream up { keepalive 32; }; upstream: nginx return 200 on core $CLIENT_CPU, port $UP_PORT"
fi
if [[ $any_tls -eq 1 ]]; then
    echo "tls modes:   ringline --listen tls://127.0.0.1:PORT --tls-cert C --tls-key K --tls-ciphersuites $TLS_SUITE scripts/http.lua"
    echo "             vs nginx+lua: listen ... ssl; ssl_protocols TLSv1.3; ssl_conf_command Ciphersuites $TLS_SUITE;"
    echo "             ssl_conf_command NumTickets 1 (ringline's one ticket); ssl_session_tickets on;"
    echo "             the same content_by_lua_block for GET /"
    echo "             certificate: self-signed CN=localhost, $([[ $TLS_KEY == rsa ]] && echo RSA-2048 || echo "ECDSA P-256"), made by openssl req in the run directory"
    echo "             tls-ka: GET / keep-alive, wrk -c$CONNS; tls-hs: GET / with -H \"Connection: close\" (a full handshake"
    echo "             per request: wrk resumes no session), wrk -c$CONNS; tls-bulk: GET /static/1m.bin ($TLS_BULK_SIZE bytes), wrk -c$TLS_BULK_CONNS"
    echo "             tls-rs: taskset -c $CLIENT_CPU openssl s_time -connect 127.0.0.1:PORT -reuse -tls1_3 -ciphersuites $TLS_SUITE"
    echo "             -time $DURATION -www / (one connection at a time, each resuming by the last ticket; GET / HTTP/1.0)"
fi
[[ $need_nginx -eq 0 ]] || echo "nginx conf:  daemon off; worker_processes 1; access_log off; keepalive_requests 1000000000; (nginx -p DIR -c DIR/nginx.conf -e DIR/error.log)"
echo

# -- Runs -------------------------------------------------------------------------
for mode in "${MODES[@]}"; do
    for ((rep = 0; rep < REPEAT; rep++)); do
        for s in $(rotated "$rep" "${SERVERS[@]}"); do
            run_one "$s" "$mode"
        done
    done
done
echo >&2

# wrk used >= 95% of its core in run $1 (server|mode): its rate is then
# (partly) the client's limit, not the server's.
wrk_saturated() {
    [[ ${WCPU[$1]:--} != - ]] && awk -v c="${WCPU[$1]}" 'BEGIN { exit !(c >= 95) }'
}

fmt='%-13s | %-9s | %12s | %9s | %9s | %13s | %15s | %8s | %11s | %14s | %13s | %15s | %10s\n'
# shellcheck disable=SC2059
printf "$fmt" server mode req/s p50 p99 "vs nginx+lua" "vs nginx return" "wrk CPU" "server CPU" \
    "req/CPU-second" "vs nginx+lua" "vs nginx return" "core$SERVER_CPU busy"
printf '%s\n' "--------------+-----------+--------------+-----------+-----------+---------------+-----------------+----------+-------------+----------------+---------------+-----------------+-----------"
client_bound=()
notes=()
for mode in "${MODES[@]}"; do
    for s in "${SERVERS[@]}"; do
        key="$s|$mode"
        skip_run "$s" "$mode" && continue
        if [[ -z ${RPS[$key]:-} ]]; then
            # shellcheck disable=SC2059
            printf "$fmt" "$(label_of "$s" "$mode")" "$mode" "${FAIL[$key]:-FAIL}" - - - - - - - - - -
            continue
        fi
        # shellcheck disable=SC2059
        printf "$fmt" "$(label_of "$s" "$mode")" "$mode" "${RPS[$key]}" "$(fmt_us "${P50[$key]}")" \
            "$(fmt_us "${P99[$key]}")" "$(ratio "${RPS[$key]}" "${RPS[nginx-lua|$mode]:-}" x)" \
            "$(ratio "${RPS[$key]}" "${RPS[nginx-return|$mode]:-}" x)" "${WCPU[$key]}%" "${SCPU[$key]}%" \
            "${EFF[$key]:--}" "$(ratio "${EFF[$key]:-}" "${EFF[nginx-lua|$mode]:-}" x)" \
            "$(ratio "${EFF[$key]:-}" "${EFF[nginx-return|$mode]:-}" x)" "${CORE[$key]}%"
        if wrk_saturated "$key"; then
            client_bound+=("$(label_of "$s" "$mode")/$mode")
        fi
        [[ -z ${NOTE[$key]} ]] || notes+=("$(label_of "$s" "$mode")/$mode: ${NOTE[$key]%; }")
    done
done
echo
echo "req/s = responses per second (wrk Requests/sec)."
echo "p50/p99: plain = wrk's latency distribution (with wrk's coordinated-omission correction);"
echo "         pipelined = per batch of $DEPTH (write to last response), measured histogram rebuilt by pipeline.lua"
echo "         (wrk's correction assumes one response per write and breaks its own percentiles with pipelining)."
echo "wrk CPU = wrk user+sys / wall time; server CPU = server process(es) user+sys / wall time;"
echo "req/CPU-second = req/s / server CPU: what one core of the server does per second of its time,"
echo "        the per-core measure when a server does not saturate its core (wrk -t1 often saturates its own first);"
echo "core$SERVER_CPU busy = busy share of the server's core from /proc/stat (softirq and any other load there included)."
if [[ ${#client_bound[@]} -gt 0 ]]; then
    echo "note: wrk saturated its core (>= 95%) for: ${client_bound[*]} -- those rates are (partly) a client limit."
fi
if [[ $any_tls -eq 1 ]]; then
    echo "tls-hs: p50/p99 are wrk's, from request write to response: the connect and handshake before it are not in"
    echo "        them (req/s there is handshakes per second)."
    echo "tls-rs: req/s = resumed TLS 1.3 handshakes per second (connections s_time reports resumed, \"r\", over the"
    echo "        wall time), one connection at a time with GET / each; wrk CPU is s_time's; no p50/p99 (s_time has none)."
    for s in "${SERVERS[@]}"; do
        [[ -z ${TLSP[$s]:-} ]] || echo "tls negotiated with $(label_of "$s") (openssl s_client): ${TLSP[$s]}"
    done
fi
for n in "${notes[@]}"; do
    echo "warning: $n"
done

# -- Targets ----------------------------------------------------------------------
unmet=0
have() { [[ -n ${RPS[$1]:-} ]]; }
echo
echo "targets (ringline >= 1.5x nginx+lua and >= 1.2x nginx return in req/s, with lower p99):"
for mode in "${MODES[@]}"; do
    r="ringline|$mode"
    if [[ $mode == proxy ]]; then
        # One core each; the upstream and wrk share the other: the target
        # is per proxy CPU-second, with lower p99.
        o="nginx-return|proxy"
        if have "$r" && have "$o" && [[ -n ${EFF[$r]} && -n ${EFF[$o]} ]]; then
            x=$(awk -v a="${EFF[$r]}" -v b="${EFF[$o]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
            verdict="met"
            awk -v x="$x" 'BEGIN { exit !(x >= 1.5) }' || verdict="NOT met"
            awk -v a="${P99[$r]}" -v b="${P99[$o]}" 'BEGIN { exit !(a < b) }' || verdict="NOT met"
            [[ $verdict == met ]] || unmet=1
            printf '  %-9s vs nginx proxy_pass: req/proxy-CPU-second %sx (want >= 1.5), p99 %s vs %s -> %s   (req/s %s)\n' \
                "$mode" "$x" "$(fmt_us "${P99[$r]}")" "$(fmt_us "${P99[$o]}")" "$verdict" "$(ratio "${RPS[$r]}" "${RPS[$o]}" x)"
        else
            printf '  %-9s vs nginx proxy_pass: not measured\n' "$mode"
        fi
        continue
    fi
    if is_tls "$mode"; then
        # No target: the ratios, ringline / nginx+lua.
        o="nginx-lua|$mode"
        if have "$r" && have "$o" && [[ $mode == tls-rs ]]; then
            printf '  %-9s vs nginx+lua    : resumed handshakes/s %s, per CPU-second %s   (no target)\n' \
                "$mode" "$(ratio "${RPS[$r]}" "${RPS[$o]}" x)" "$(ratio "${EFF[$r]:-}" "${EFF[$o]:-}" x)"
        elif have "$r" && have "$o"; then
            printf '  %-9s vs nginx+lua    : req/s %s, req/CPU-second %s, p99 %s vs %s (%s)   (no target)\n' \
                "$mode" "$(ratio "${RPS[$r]}" "${RPS[$o]}" x)" "$(ratio "${EFF[$r]:-}" "${EFF[$o]:-}" x)" \
                "$(fmt_us "${P99[$r]}")" "$(fmt_us "${P99[$o]}")" "$(ratio "${P99[$r]}" "${P99[$o]}" x)"
        else
            printf '  %-9s vs nginx+lua    : not measured\n' "$mode"
        fi
        continue
    fi
    if [[ $mode == static ]]; then
        # Both nginx runs serve the file by sendfile: the target is to lead
        # it per server CPU-second (req/s is wrk's limit at 64 KiB).
        o="nginx-return|static"
        have "$o" || o="nginx-lua|static"
        if have "$r" && have "$o" && [[ -n ${EFF[$r]} && -n ${EFF[$o]} ]]; then
            x=$(awk -v a="${EFF[$r]}" -v b="${EFF[$o]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
            verdict="met"
            awk -v x="$x" 'BEGIN { exit !(x >= 1) }' || { verdict="NOT met"; unmet=1; }
            printf '  %-9s vs nginx sendfile: req/CPU-second %sx (want >= 1) -> %s   (req/s %s)\n' \
                "$mode" "$x" "$verdict" "$(ratio "${RPS[$r]}" "${RPS[$o]}" x)"
        else
            printf '  %-9s vs nginx sendfile: not measured\n' "$mode"
        fi
        continue
    fi
    for pair in "nginx-lua 1.5" "nginx-return 1.2"; do
        read -r other want <<<"$pair"
        o="$other|$mode"
        if ! have "$r" || ! have "$o" || [[ -z ${P99[$r]} || -z ${P99[$o]} ]]; then
            printf '  %-9s vs %-13s: not measured\n' "$mode" "$(label_of "$other")"
            continue
        fi
        x=$(awk -v a="${RPS[$r]}" -v b="${RPS[$o]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
        rate_ok=0
        awk -v x="$x" -v w="$want" 'BEGIN { exit !(x >= w) }' && rate_ok=1
        p99_ok=0
        awk -v a="${P99[$r]}" -v b="${P99[$o]}" 'BEGIN { exit !(a < b) }' && p99_ok=1
        verdict="met"
        if [[ $rate_ok -eq 0 || $p99_ok -eq 0 ]]; then
            verdict="NOT met"
            unmet=1
        fi
        # The verdict stays in req/s; the per-core ratio is shown beside it
        # because a saturated wrk pulls every req/s ratio towards 1.
        sat=""
        if wrk_saturated "$r" && wrk_saturated "$o"; then
            sat="; wrk saturated its core (>= 95%) in both runs: the req/s ratio is a client limit"
        elif wrk_saturated "$r"; then
            sat="; wrk saturated its core (>= 95%) against ringline: the req/s ratio is partly a client limit"
        elif wrk_saturated "$o"; then
            sat="; wrk saturated its core (>= 95%) against $(label_of "$other"): the req/s ratio is partly a client limit"
        fi
        printf '  %-9s vs %-13s: req/s %sx (want >= %s: %s), p99 %s vs %s (%s) -> %s   (req/CPU-second %s%s)\n' \
            "$mode" "$(label_of "$other")" "$x" "$want" "$([[ $rate_ok -eq 1 ]] && echo ok || echo no)" \
            "$(fmt_us "${P99[$r]}")" "$(fmt_us "${P99[$o]}")" "$([[ $p99_ok -eq 1 ]] && echo lower || echo "not lower")" \
            "$verdict" "$(ratio "${EFF[$r]:-}" "${EFF[$o]:-}" x)" "$sat"
    done
done

if [[ $FAILED -ne 0 ]]; then
    warn "some runs failed (see messages above)"
    exit 1
fi
if [[ $unmet -ne 0 && $STRICT == 1 ]]; then
    warn "targets not met (BENCH_STRICT=1)"
    exit 1
fi
exit 0
