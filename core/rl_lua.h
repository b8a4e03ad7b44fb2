/* rl_lua.h: the LuaJIT embedding: states, module paths, the service script. */
#ifndef RL_LUA_H
#define RL_LUA_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "rl_api.h"

struct rl_worker;

/* A Lua state's allocator: LuaJIT's own, counted and capped (--lua-memory).
 * Past the limit a growing allocation returns NULL, which LuaJIT turns into
 * a "not enough memory" error in the code that asked; frees and shrinks
 * always go through. */
struct rl_luamem {
	lua_Alloc f;            /* LuaJIT's allocator and its data */
	void *ud;
	int64_t used;           /* bytes held (from the state's GC count) */
	size_t limit;           /* 0: none */
	int relaxed;            /* a reserve on top: see rl_lua_memory_relax */
	uint64_t *used_stat;    /* where used is mirrored (worker stats) */
	uint64_t *errors_stat;  /* refused allocations are counted here */
};

/* Where the ringline Lua modules are: next to the binary's build tree
 * (../lua) or its install tree (../share/ringline/lua), never the current
 * directory.  RINGLINE_LUA_DIR overrides.  0 or -ENOENT. */
int rl_lua_find_dir(char *out, size_t len);

/* Load the script in a scratch state, as every worker will, and return the
 * listen addresses it declares.  0, or -1 with the reason in err. */
int rl_lua_check(const char *lua_dir, const char *script, char listen[][128],
		 int max, int *nlisten, size_t *dict_memory, size_t lua_memory,
		 rl_guard *guard, char *err, size_t errlen);

/* Give the worker its state, load the script and run its init().
 * 0, or -1 with the reason in err. */
int rl_lua_worker_start(struct rl_worker *w, char *err, size_t errlen);
/* Run the worker's loop until it stops.  0, or -1 with the reason. */
int rl_lua_worker_run(struct rl_worker *w, char *err, size_t errlen);
void rl_lua_worker_close(struct rl_worker *w);

#endif
