# tests/fuzz/fuzz.mk: libFuzzer targets (make fuzz), corpus replay (make fuzz-replay), CI run (make fuzz-ci).
#
# Every tests/fuzz/fuzz_<name>.c is a target $(BUILD)/fuzz/<name>, seeded
# from tests/fuzz/corpus/<name>/.  The core objects are compiled again with
# the sanitizers and coverage instrumentation (-fsanitize=fuzzer-no-link),
# into $(BUILD)/fuzz/obj/, so the fuzzer sees their branches; main.o is left
# out because libFuzzer brings its own main().
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS := -O1 -g -fno-omit-frame-pointer -std=gnu11 -Wall -Wextra \
	-Wno-unused-parameter -D_GNU_SOURCE \
	$(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_NAMES := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS := $(FUZZ_NAMES:%=$(BUILD)/fuzz/%)
FUZZ_OBJS := $(CORE:%=$(BUILD)/fuzz/obj/%.o)
FUZZ_RUN := sh tests/fuzz/run.sh
# Pattern-built, so make would delete them as intermediates.
.SECONDARY: $(FUZZ_OBJS)

.PHONY: fuzz fuzz-replay fuzz-ci fuzz-deps fuzz-build

# clang and its sanitizer runtimes, besides what the normal build needs.
fuzz-deps: deps
	@$(MAKE) -s install-pkgs PKGS_WANTED="clang libclang-rt-14-dev"

fuzz-build: $(FUZZ_BINS)

$(BUILD)/fuzz/obj/%.o: core/%.c $(HEADERS) | fuzz-deps
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c -o $@ $<

$(BUILD)/fuzz/%: tests/fuzz/fuzz_%.c $(wildcard tests/fuzz/*.h) $(FUZZ_OBJS) | fuzz-deps
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer -Icore \
		$(EXPORT) -o $@ $< $(FUZZ_OBJS) $(LDLIBS)

# The Lua parsers' target embeds LuaJIT and links no core object; the repo
# root is compiled in for when the binary is not at $(BUILD)/fuzz/ under it.
$(BUILD)/fuzz/lua_parsers: tests/fuzz/fuzz_lua_parsers.c $(CDEF) | fuzz-deps
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer \
		-DFUZZ_REPO_ROOT='"$(CURDIR)"' -o $@ $< $(LDLIBS)

fuzz-replay: $(FUZZ_BINS)
	@$(FUZZ_RUN) fuzz-replay $(BUILD)/fuzz 0 $(FUZZ_NAMES)

fuzz: $(FUZZ_BINS)
	@$(FUZZ_RUN) fuzz $(BUILD)/fuzz $(FUZZ_SECONDS) $(FUZZ_NAMES)

fuzz-ci: $(FUZZ_BINS)
	@$(FUZZ_RUN) fuzz-ci $(BUILD)/fuzz 20 $(FUZZ_NAMES)
