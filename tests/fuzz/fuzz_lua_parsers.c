/* fuzz_lua_parsers.c: fuzzes the LuaJIT protocol parsers (lua/ringline/resp.lua, memcache.lua, http/parser.lua) through tests/fuzz/lua_parsers_driver.lua: arbitrary bytes at arbitrary split points, each call must return consumed / need-more / error without raising, and split and whole parses must agree.
 *
 * One lua_State for the whole run, with the repo's lua/ on package.path;
 * the repo root is $RINGLINE_ROOT, else two levels above this binary
 * (build/fuzz/lua_parsers), else the directory it was built in.  The driver
 * raises on any disagreement; here that is an abort() with its message,
 * which libFuzzer reports as a crash.
 *
 * libFuzzer sees no branch of Lua code, so a C line hook gives it one:
 * every line the interpreter runs marks an 8-bit counter for the edge
 * (previous line, this line), registered with libFuzzer as a module of its
 * own (with a table of made-up PCs, so that "cov:" counts them).  The hook
 * keeps the JIT from running; with FUZZ_LUA_JIT=1 in the environment each
 * input is also run once more without it, compiled, against the same
 * checks. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#ifndef FUZZ_REPO_ROOT
#define FUZZ_REPO_ROOT "."
#endif

#define INPUT_MAX (64u << 10)   /* larger inputs are ignored */
#define COUNTERS (1u << 16)     /* Lua line edges, hashed */
#define GC_EVERY 256            /* inputs between full collections */
#define RESET_KB (256u << 10)   /* a state over this is started again */

extern void __sanitizer_cov_8bit_counters_init(uint8_t *start, uint8_t *stop);
extern void __sanitizer_cov_pcs_init(const uintptr_t *beg,
				     const uintptr_t *end);

static uint8_t lua_edges[COUNTERS] __attribute__((aligned(4096)));
static uintptr_t lua_pcs[2 * COUNTERS];
static uint32_t prev_line;

static lua_State *L;
static int run_ref = LUA_NOREF;
static char root[PATH_MAX];
static uint8_t *region;         /* guard | bytes | guard */
static size_t region_len, page;
static int jit_too;

static void line_hook(lua_State *l, lua_Debug *ar)
{
	uint32_t cur = (uint32_t)ar->currentline;

	lua_edges[(cur * 2654435761u ^ prev_line) & (COUNTERS - 1)]++;
	prev_line = cur >> 1;
}

static void find_root(const char *argv0)
{
	const char *env = getenv("RINGLINE_ROOT");
	char exe[PATH_MAX], probe[PATH_MAX + 32];
	ssize_t n;

	if (env && *env) {
		snprintf(root, sizeof(root), "%s", env);
		return;
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		for (int up = 0; up < 3; up++) {   /* binary, fuzz/, build/ */
			char *slash = strrchr(exe, '/');

			if (!slash)
				break;
			*slash = '\0';
		}
		snprintf(probe, sizeof(probe), "%s/lua/ringline/resp.lua", exe);
		if (access(probe, R_OK) == 0) {
			snprintf(root, sizeof(root), "%s", exe);
			return;
		}
	}
	(void)argv0;
	snprintf(root, sizeof(root), "%s", FUZZ_REPO_ROOT);
}

/* Bytes for the slices: INPUT_MAX + slack between two PROT_NONE pages. */
static void map_region(void)
{
	size_t body;

	page = (size_t)sysconf(_SC_PAGESIZE);
	body = (INPUT_MAX + 64 + page - 1) / page * page;
	region_len = body + 2 * page;
	region = mmap(NULL, region_len, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED) {
		perror("fuzz_lua_parsers: mmap");
		abort();
	}
	if (mprotect(region, page, PROT_NONE) ||
	    mprotect(region + page + body, page, PROT_NONE)) {
		perror("fuzz_lua_parsers: mprotect");
		abort();
	}
}

static int traceback(lua_State *l)
{
	const char *msg = lua_tostring(l, 1);

	luaL_traceback(l, l, msg ? msg : "(error object is not a string)", 1);
	return 1;
}

static void die(const char *what)
{
	fprintf(stderr, "fuzz_lua_parsers: %s: %s\n", what,
		lua_tostring(L, -1));
	abort();
}

static void new_state(void)
{
	char path[3 * PATH_MAX];
	size_t body = region_len - 2 * page;

	if (L)
		lua_close(L);
	L = luaL_newstate();
	if (!L)
		abort();
	luaL_openlibs(L);
	lua_getglobal(L, "package");
	snprintf(path, sizeof(path),
		 "%s/lua/?.lua;%s/lua/?/init.lua;%s/tests/fuzz/?.lua",
		 root, root, root);
	lua_pushstring(L, path);
	lua_setfield(L, -2, "path");
	lua_pop(L, 1);

	lua_pushcfunction(L, traceback);
	lua_getglobal(L, "require");
	lua_pushstring(L, "lua_parsers_driver");
	if (lua_pcall(L, 1, 1, -3))
		die("loading tests/fuzz/lua_parsers_driver.lua");
	lua_getfield(L, -1, "init");
	lua_pushlightuserdata(L, region + page);
	lua_pushlightuserdata(L, region + page + body);
	lua_pushinteger(L, (lua_Integer)body);
	if (lua_pcall(L, 3, 0, -5))
		die("driver init");
	lua_getfield(L, -1, "run");
	run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pop(L, 2);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	for (uint32_t i = 0; i < COUNTERS; i++)
		lua_pcs[2 * i] = (uintptr_t)&lua_edges[i];
	__sanitizer_cov_8bit_counters_init(lua_edges, lua_edges + COUNTERS);
	__sanitizer_cov_pcs_init(lua_pcs, lua_pcs + 2 * COUNTERS);
	jit_too = getenv("FUZZ_LUA_JIT") && atoi(getenv("FUZZ_LUA_JIT"));
	find_root(*argc > 0 ? (*argv)[0] : NULL);
	map_region();
	new_state();
	return 0;
}

static void run_once(const uint8_t *data, size_t size, int hooked)
{
	lua_pushcfunction(L, traceback);
	lua_rawgeti(L, LUA_REGISTRYINDEX, run_ref);
	lua_pushlstring(L, (const char *)data, size);
	prev_line = 0;
	if (hooked)
		lua_sethook(L, line_hook, LUA_MASKLINE, 0);
	if (lua_pcall(L, 1, 0, -3)) {
		lua_sethook(L, NULL, 0, 0);
		fprintf(stderr, "fuzz_lua_parsers: %s\n", lua_tostring(L, -1));
		abort();
	}
	if (hooked)
		lua_sethook(L, NULL, 0, 0);
	lua_pop(L, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned inputs;

	if (size > INPUT_MAX)
		return 0;
	run_once(data, size, 1);
	if (jit_too)
		run_once(data, size, 0);
	if (++inputs % GC_EVERY == 0) {
		lua_gc(L, LUA_GCCOLLECT, 0);
		if ((unsigned)lua_gc(L, LUA_GCCOUNT, 0) > RESET_KB)
			new_state();
	}
	return 0;
}
