/* libs.c: what a sluice Lua state holds before any script runs: the standard libraries, every
 * C module of the build as sluice.core.<name> (in package.preload: loaded on first require),
 * lua-cjson, and lua/ on package.path. The executable (main.c) and the fuzz targets
 * (tests/fuzz/harness.h) both set their states up with it, so they load the same modules.
 */
#include <lualib.h>

#include "sluice.h"
#include "sluice_modules.h" /* generated: SLUICE_MODULES(X) */

int luaopen_cjson(lua_State *L);

#define DECLARE(name) int luaopen_sluice_##name(lua_State *L);
SLUICE_MODULES(DECLARE)
#undef DECLARE

void sl_open_libs(lua_State *L, const char *path_prefix, const char *lua_dir,
                  const char *share_dir) {
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
#define PRELOAD(name)                          \
  lua_pushcfunction(L, luaopen_sluice_##name); \
  lua_setfield(L, -2, "sluice.core." #name);
  SLUICE_MODULES(PRELOAD)
#undef PRELOAD
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
