/* rl_lua.h: the LuaJIT embedding: states, module paths, the service script. */
#ifndef RL_LUA_H
#define RL_LUA_H

#include <stddef.h>

struct rl_worker;

/* Where the ringline Lua modules are: next to the binary's build tree
 * (../lua) or its install tree (../share/ringline/lua), never the current
 * directory.  RINGLINE_LUA_DIR overrides.  0 or -ENOENT. */
int rl_lua_find_dir(char *out, size_t len);

/* Load the script in a scratch state, as every worker will, and return the
 * listen addresses it declares.  0, or -1 with the reason in err. */
int rl_lua_check(const char *lua_dir, const char *script, char listen[][128],
		 int max, int *nlisten, size_t *dict_memory, char *err,
		 size_t errlen);

/* Give the worker its state, load the script and run its init().
 * 0, or -1 with the reason in err. */
int rl_lua_worker_start(struct rl_worker *w, char *err, size_t errlen);
/* Run the worker's loop until it stops.  0, or -1 with the reason. */
int rl_lua_worker_run(struct rl_worker *w, char *err, size_t errlen);
void rl_lua_worker_close(struct rl_worker *w);

#endif
