/* libs.c: what a sluice Lua state holds before any script runs: the standard libraries, the
 * given C modules as sluice.core.<name> (in package.preload: loaded on first require),
 * lua-cjson, and lua/ on package.path. The executable (main.c, with every module of the build:
 * modules.c), the fuzz targets (tests/fuzz/harness.h) and the C unit tests (tests/c/harness.h,
 * which may name the runtime's modules only) all set their states up with it.
 */
#include <lualib.h>

#include "sluice.h"

int luaopen_cjson(lua_State *L);
int luaopen_sluice_core(lua_State *L);

void sl_open_libs(lua_State *L, const luaL_Reg *modules, const char *path_prefix,
                  const char *lua_dir, const char *share_dir) {
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  for (const luaL_Reg *m = modules; m->name; m++) {
    lua_pushcfunction(L, m->func);
    lua_setfield(L, -2, m->name);
  }
  lua_pushcfunction(L, luaopen_cjson);
  lua_setfield(L, -2, "cjson");
  lua_pop(L, 1);

  lua_pushstring(L, path_prefix);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);

  luaL_requiref(L, "sluice.core.core", luaopen_sluice_core, 0);
  lua_pushstring(L, lua_dir);
  lua_setfield(L, -2, "lua_dir");
  lua_pushstring(L, share_dir);
  lua_setfield(L, -2, "share_dir");
  lua_pop(L, 1);
}
