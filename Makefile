# Makefile: builds ringline, generates the FFI cdef, runs tests and benchmarks.
PREFIX ?= /usr/local
DESTDIR ?=
BUILD ?= build
CC ?= cc
PKGS := liburing luajit openssl

# Debian packages the build, the tests and the benchmarks need.  Never
# libluajit-5.1-dev: it conflicts with libnginx-mod-http-lua (HTTP bench).
DEPS_BUILD := gcc make pkg-config liburing-dev libluajit2-5.1-dev luajit2 \
	libcmocka-dev libssl-dev
DEPS_TEST := python3 procps util-linux curl redis-server redis-tools \
	memcached libmemcached-tools nginx-light openssl stunnel4
DEPS := $(DEPS_BUILD) $(DEPS_TEST)
# The peers the benchmarks compare against, installed by `make bench`.
DEPS_BENCH := wrk nginx-light libnginx-mod-http-lua haproxy

OPT ?= -O2
CFLAGS ?= $(OPT) -g
CFLAGS += -std=gnu11 -Wall -Wextra -Wno-unused-parameter -D_GNU_SOURCE \
	$(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# Both expand when used, not when the Makefile is read: on a fresh machine
# `make deps` installs the .pc files first.
LDLIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm -ldl
# Export our symbols: Lua finds the rl_* functions through ffi.C.
EXPORT := -Wl,-E

CORE := rl_bufring rl_conn rl_rxbuf rl_rxhold rl_sendq rl_options rl_listen rl_log \
	rl_worker rl_worker_setup rl_conn_io rl_pause rl_conn_api rl_connect rl_file rl_budget \
	rl_lua rl_reload rl_dict rl_dict_rmw rl_dict_scan rl_resolve rl_watchdog \
	rl_tls rl_tls_io rl_tls_client
CORE_OBJS := $(CORE:%=$(BUILD)/%.o)
HEADERS := $(wildcard core/*.h)
CDEF := lua/ringline/cdef.lua

UNIT_TESTS := $(filter-out test_faults,\
	$(patsubst tests/unit/%.c,%,$(wildcard tests/unit/test_*.c)))
# The allocation-fault tests compile these sources again with failing
# allocators (core/rl_alloc.h) and AddressSanitizer's leak check.
FAULT_CORE := rl_bufring rl_sendq rl_rxbuf rl_rxhold rl_dict rl_dict_rmw rl_dict_scan
FAULT_OBJS := $(FAULT_CORE:%=$(BUILD)/faults/%.o)
FAULT_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined -DRL_FAULT_INJECTION
# load_common.c is not a tool: the load generators link it.
BENCH_TOOLS := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,\
	$(filter-out tests/bench/load_common.c,$(wildcard tests/bench/*.c)))
LOAD_TOOLS := $(BUILD)/bench/echo_load $(BUILD)/bench/mc_load

.PHONY: all deps bench-deps install-pkgs run test unit lua-test integration asan asan-test bench \
	install clean

all: deps $(BUILD)/ringline $(CDEF)

# Install what is missing, by Debian package name; quiet when all is there.
deps:
	@$(MAKE) -s install-pkgs PKGS_WANTED="$(DEPS)"

bench-deps:
	@$(MAKE) -s install-pkgs PKGS_WANTED="$(DEPS) $(DEPS_BENCH)"

install-pkgs:
	@missing=""; for p in $(PKGS_WANTED); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
			--no-install-recommends $$missing; \
	fi

# deps is order-only: under -j nothing compiles before the packages are in.
$(BUILD)/%.o: core/%.c $(HEADERS) | $(BUILD) deps
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/ringline: $(BUILD)/main.o $(CORE_OBJS)
	$(CC) $(CFLAGS) $(LDFLAGS) $(EXPORT) -o $@ $^ $(LDLIBS)

$(BUILD):
	mkdir -p $@

# The one place the FFI declarations come from: core/rl_api.h (and the
# rl_dict.h it includes).
$(CDEF): core/rl_api.h core/rl_dict.h core/rl_file.h | deps
	{ echo '-- Generated from core/rl_api.h by the Makefile: do not edit.'; \
	  echo 'local ffi = require "ffi"'; \
	  echo 'ffi.cdef[['; \
	  $(CC) -E -P -DRL_FFI_CDEF core/rl_api.h; \
	  echo ']]'; \
	  echo 'return true'; } > $@.tmp && mv $@.tmp $@

run: all
	$(BUILD)/ringline scripts/echo.lua

# -- Tests ----------------------------------------------------------------
$(BUILD)/unit/%: tests/unit/%.c $(CORE_OBJS) $(HEADERS) $(wildcard tests/unit/*.h)
	@mkdir -p $(BUILD)/unit
	$(CC) $(CFLAGS) -Icore $(LDFLAGS) -o $@ $< $(CORE_OBJS) \
		$(LDLIBS) -lcmocka

$(BUILD)/faults/%.o: core/%.c $(HEADERS) | deps
	@mkdir -p $(BUILD)/faults
	$(CC) $(filter-out -O%,$(CFLAGS)) $(FAULT_FLAGS) -c -o $@ $<

$(BUILD)/unit/test_faults: tests/unit/test_faults.c $(FAULT_OBJS) $(HEADERS)
	@mkdir -p $(BUILD)/unit
	$(CC) $(filter-out -O%,$(CFLAGS)) $(FAULT_FLAGS) -Icore -o $@ $< \
		$(FAULT_OBJS) $(LDLIBS) -lcmocka

unit: deps $(UNIT_TESTS:%=$(BUILD)/unit/%) $(BUILD)/unit/test_faults
	@fail=0; for t in $(UNIT_TESTS) test_faults; do \
		ASAN_OPTIONS=detect_leaks=1 $(BUILD)/unit/$$t || fail=1; \
		done; exit $$fail

lua-test: all
	luajit tests/lua/run.lua

integration: all
	python3 tests/integration/run.py --bin $(BUILD)/ringline

ASAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined

asan:
	$(MAKE) BUILD=build-asan OPT="$(ASAN_FLAGS)" \
		LDFLAGS="-fsanitize=address,undefined" build-asan/ringline

asan-test: all asan
	RINGLINE_ASAN=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
		python3 tests/integration/run.py --bin build-asan/ringline

test: all
	$(MAKE) unit
	$(MAKE) fuzz-replay
	$(MAKE) lua-test
	$(MAKE) integration
	$(MAKE) asan-test

# Fuzz targets (make fuzz, fuzz-replay, fuzz-ci) live in their own file.
include tests/fuzz/fuzz.mk

# -- Benchmarks (not tests) -------------------------------------------------
BENCH_CFLAGS := -O2 -g -std=gnu11 -Wall -Wextra

$(BUILD)/bench/%: tests/bench/%.c
	@mkdir -p $(BUILD)/bench
	$(CC) $(BENCH_CFLAGS) -o $@ $<

$(LOAD_TOOLS): $(BUILD)/bench/%: tests/bench/%.c tests/bench/load_common.c tests/bench/load_common.h
	@mkdir -p $(BUILD)/bench
	$(CC) $(BENCH_CFLAGS) -o $@ $< tests/bench/load_common.c

bench: bench-deps all $(BENCH_TOOLS)
	bash tests/bench/bench_echo.sh $(BUILD)
	bash tests/bench/bench_http.sh $(BUILD)
	python3 tests/bench/bench_reload.py $(BUILD)
	bash tests/bench/bench_proxy.sh $(BUILD)
	bash tests/bench/bench_redis.sh $(BUILD)
	bash tests/bench/bench_memcached.sh $(BUILD)
	python3 tests/bench/bench_hostile.py $(BUILD)

# -- Install ------------------------------------------------------------------
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/ringline/scripts
	install -m 755 $(BUILD)/ringline $(DESTDIR)$(PREFIX)/bin/ringline
	for f in $$(cd lua && find . -name '*.lua'); do \
		install -D -m 644 lua/$$f $(DESTDIR)$(PREFIX)/share/ringline/lua/$$f; done
	install -m 644 scripts/*.lua $(DESTDIR)$(PREFIX)/share/ringline/scripts/

clean:
	rm -rf build build-asan $(CDEF)
