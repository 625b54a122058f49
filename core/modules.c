/* modules.c: the list of every C module of the build, for sl_open_libs (libs.c). In a file of
 * its own, so that a program that preloads fewer modules (the C unit tests that run under
 * valgrind) does not link the others, and FFmpeg with them. */
#include "sluice.h"
#include "sluice_modules.h" /* generated: SLUICE_MODULES(X) */

#define DECLARE(name) int luaopen_sluice_##name(lua_State *L);
SLUICE_MODULES(DECLARE)
#undef DECLARE

#define ENTRY(name) {"sluice.core." #name, luaopen_sluice_##name},
const luaL_Reg sl_all_modules[] = {SLUICE_MODULES(ENTRY){NULL, NULL}};
#undef ENTRY
