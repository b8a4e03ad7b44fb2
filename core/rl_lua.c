/* rl_lua.c: the LuaJIT embedding: states, module paths, the service script. */

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "rl_lua.h"
#include "rl_worker.h"

static int is_lua_dir(const char *dir)
{
	char path[2 * PATH_MAX];

	snprintf(path, sizeof(path), "%s/ringline/loop.lua", dir);
	return access(path, R_OK) == 0;
}

int rl_lua_find_dir(char *out, size_t len)
{
	static const char *const rel[] = { "../lua", "../share/ringline/lua" };
	const char *env = getenv("RINGLINE_LUA_DIR");
	char exe[PATH_MAX], *dir;
	ssize_t n;

	if (env && *env) {
		snprintf(out, len, "%s", env);
		return is_lua_dir(out) ? 0 : -ENOENT;
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n < 0)
		return -errno;
	exe[n] = 0;
	dir = dirname(exe);
	for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
		char cand[PATH_MAX + 32], real[PATH_MAX];

		snprintf(cand, sizeof(cand), "%s/%s", dir, rel[i]);
		if (is_lua_dir(cand) && realpath(cand, real)) {
			snprintf(out, len, "%s", real);
			return 0;
		}
	}
	return -ENOENT;
}

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct rl_luamem *m = ud;
	void *p;

	if (nsize > osize && m->limit) {
		size_t cap = m->relaxed ? m->limit + m->limit / 8 + (1u << 20) :
			     m->limit;

		if (m->used + (int64_t)(nsize - osize) > (int64_t)cap) {
			(*m->errors_stat)++;
			/* The error unwinds through code that allocates (the
			 * loop's catch, the log line): the reserve opens now,
			 * and the loop closes it once it has collected. */
			m->relaxed = 1;
			return NULL;
		}
	}
	p = m->f(m->ud, ptr, osize, nsize);
	if (p || nsize == 0) {
		m->used += (int64_t)nsize - (int64_t)osize;
		*m->used_stat = m->used > 0 ? (uint64_t)m->used : 0;
	}
	return p;
}

/* A state whose require finds the script's own directory first, then
 * ringline's modules, and whose allocations are capped by mem->limit. */
static lua_State *new_state(const char *lua_dir, const char *script,
			    struct rl_luamem *mem)
{
	char sdir[PATH_MAX], path[4 * PATH_MAX + 64];
	lua_State *L = luaL_newstate();
	const char *d;

	if (!L)
		return NULL;
	/* LuaJIT's allocator stays (it is faster than malloc for its small
	 * objects); ours only counts in front of it. */
	mem->f = lua_getallocf(L, &mem->ud);
	mem->used = (int64_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 +
		    lua_gc(L, LUA_GCCOUNTB, 0);
	lua_setallocf(L, capped_alloc, mem);
	luaL_openlibs(L);

	snprintf(sdir, sizeof(sdir), "%s", script ? script : "./x");
	d = dirname(sdir);
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "path");
	snprintf(path, sizeof(path), "%s/?.lua;%s/?/init.lua;%s/?.lua;%s/?/init.lua;%s",
		 d, d, lua_dir, lua_dir, lua_tostring(L, -1));
	lua_pop(L, 1);
	lua_pushstring(L, path);
	lua_setfield(L, -2, "path");
	lua_pop(L, 1);
	return L;
}

static void copy_err(lua_State *L, char *err, size_t len)
{
	const char *msg = lua_tostring(L, -1);

	snprintf(err, len, "%s", msg ? msg : "(error object is not a string)");
}

/* require(mod)[fn] pushed on the stack, or -1 with err. */
static int push_module_fn(lua_State *L, const char *mod, const char *fn,
			  char *err, size_t len)
{
	lua_getglobal(L, "require");
	lua_pushstring(L, mod);
	if (lua_pcall(L, 1, 1, 0)) {
		copy_err(L, err, len);
		return -1;
	}
	lua_getfield(L, -1, fn);
	lua_remove(L, -2);
	return 0;
}

/* Guard the state's script code (ringline.guard) with g. */
static int bind_guard(lua_State *L, rl_guard *g, char *err, size_t len)
{
	if (push_module_fn(L, "ringline.guard", "bind", err, len))
		return -1;
	lua_pushlightuserdata(L, g);
	if (lua_pcall(L, 1, 0, 0)) {
		copy_err(L, err, len);
		return -1;
	}
	return 0;
}

int rl_lua_check(const char *lua_dir, const char *script, char listen[][128],
		 int max, int *nlisten, size_t *dict_memory, size_t lua_memory,
		 rl_guard *guard, char *err, size_t len)
{
	static uint64_t used, errors;
	struct rl_luamem mem = { .limit = lua_memory, .used_stat = &used,
				 .errors_stat = &errors };
	lua_State *L = new_state(lua_dir, script, &mem);
	int ret = -1;

	*nlisten = 0;
	if (!L) {
		snprintf(err, len, "cannot create a Lua state");
		return -1;
	}
	if (bind_guard(L, guard, err, len))
		goto out;
	if (push_module_fn(L, "ringline.service", "load", err, len))
		goto out;
	lua_pushstring(L, script);
	if (lua_pcall(L, 1, 1, 0)) {
		copy_err(L, err, len);
		goto out;
	}
	/* listen: a string or a list of strings (checked by service.load). */
	lua_getfield(L, -1, "listen");
	if (lua_type(L, -1) == LUA_TSTRING) {
		snprintf(listen[(*nlisten)++], 128, "%s", lua_tostring(L, -1));
	} else if (lua_istable(L, -1)) {
		for (int i = 1; *nlisten < max; i++) {
			lua_rawgeti(L, -1, i);
			if (!lua_isstring(L, -1)) {
				lua_pop(L, 1);
				break;
			}
			snprintf(listen[(*nlisten)++], 128, "%s", lua_tostring(L, -1));
			lua_pop(L, 1);
		}
	}
	lua_pop(L, 1);
	/* dict_memory: bytes for the shared dictionary (--dict-memory wins). */
	lua_getfield(L, -1, "dict_memory");
	if (lua_isnumber(L, -1) && lua_tonumber(L, -1) > 0)
		*dict_memory = (size_t)lua_tonumber(L, -1);
	ret = 0;
out:
	__atomic_store_n(&guard->armed, 0, __ATOMIC_RELAXED);
	mem.relaxed = 1;
	lua_close(L);
	return ret;
}

int rl_lua_worker_start(struct rl_worker *w, char *err, size_t len)
{
	lua_State *L;

	w->luamem = calloc(1, sizeof(*w->luamem));
	if (!w->luamem) {
		snprintf(err, len, "out of memory");
		return -1;
	}
	w->luamem->limit = w->cfg->lua_memory;
	w->luamem->used_stat = &w->stats.lua_memory;
	w->luamem->errors_stat = &w->stats.lua_memory_errors;
	L = new_state(w->shared->lua_dir, w->cfg->script, w->luamem);
	if (!L) {
		snprintf(err, len, "cannot create a Lua state");
		return -1;
	}
	w->lua = L;
	if (bind_guard(L, &w->guard, err, len))
		return -1;
	if (push_module_fn(L, "ringline.loop", "prepare", err, len))
		return -1;
	lua_pushlightuserdata(L, w);
	lua_pushstring(L, w->cfg->script);
	/* Returns the loop function; it stays on the stack for run. */
	if (lua_pcall(L, 2, 1, 0)) {
		copy_err(L, err, len);
		return -1;
	}
	return 0;
}

int rl_lua_worker_run(struct rl_worker *w, char *err, size_t len)
{
	lua_State *L = w->lua;

	if (lua_pcall(L, 0, 0, 0)) {
		copy_err(L, err, len);
		return -1;
	}
	return 0;
}

void rl_lua_worker_close(struct rl_worker *w)
{
	__atomic_store_n(&w->guard.armed, 0, __ATOMIC_RELAXED);
	if (w->lua) {
		w->luamem->relaxed = 1;   /* closing frees; nothing may fail */
		lua_close(w->lua);
	}
	w->lua = NULL;
	free(w->luamem);
	w->luamem = NULL;
}

void rl_lua_memory_relax(rl_worker *w, int on)
{
	if (w->luamem)
		w->luamem->relaxed = on;
}
