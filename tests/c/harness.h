/* harness.h: a tiny test harness for the C unit tests.
 *
 * h_open() sets an engine up the way main.c does (loop, Lua state, sl_engine_init,
 * sl_open_libs: the standard libraries, the C modules preloaded, lua/ on package.path,
 * sluice.core.core required); h_lua() runs a chunk through sl_call; h_close() closes the engine and checks
 * that the loop closed cleanly (every handle closed). CHECK counts failures; h_done()
 * prints the summary and gives the exit status.
 */
#ifndef SLUICE_TEST_HARNESS_H
#define SLUICE_TEST_HARNESS_H

#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

/* Every C module by default. A test that defines H_RUNTIME_ONLY before including this file
 * gets only the runtime's modules: linked with --as-needed it then does not load FFmpeg
 * (whose libhwy start-up code valgrind cannot run), so it can run under valgrind. */
#ifdef H_RUNTIME_ONLY
int luaopen_sluice_core(lua_State *L);
int luaopen_sluice_pool(lua_State *L);
int luaopen_sluice_proc(lua_State *L);
int luaopen_sluice_repl(lua_State *L);
static const luaL_Reg h_modules[] = {{"sluice.core.core", luaopen_sluice_core},
                                     {"sluice.core.pool", luaopen_sluice_pool},
                                     {"sluice.core.proc", luaopen_sluice_proc},
                                     {"sluice.core.repl", luaopen_sluice_repl},
                                     {NULL, NULL}};
#else
#define h_modules sl_all_modules
#endif

static int h_failures = 0;
static int h_checks = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    h_checks++;                                                                \
    if (!(cond)) {                                                             \
      h_failures++;                                                            \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)

#define CHECK_EQ_INT(a, b)                                                                     \
  do {                                                                                         \
    long long h_a = (long long)(a), h_b = (long long)(b);                                      \
    h_checks++;                                                                                \
    if (h_a != h_b) {                                                                          \
      h_failures++;                                                                            \
      fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, h_a, h_b); \
    }                                                                                          \
  } while (0)

/* Opens an engine on loop (which the caller owns and has initialised). Cannot fail: exits
 * the test on error. */
static inline lua_State *h_open(uv_loop_t *loop) {
  if (uv_loop_init(loop) != 0) {
    fprintf(stderr, "uv_loop_init failed\n");
    exit(2);
  }
  lua_State *L = luaL_newstate();
  if (!L || sl_engine_init(L, loop) != 0) {
    fprintf(stderr, "engine init failed\n");
    exit(2);
  }
  sl_open_libs(L, h_modules, SLUICE_SOURCE_DIR "/lua/?.lua;" SLUICE_SOURCE_DIR "/lua/?/init.lua;",
               SLUICE_SOURCE_DIR "/lua", SLUICE_SOURCE_DIR);
  return L;
}

/* Runs code as a chunk on L through sl_call; returns the Lua status. */
static inline int h_lua(lua_State *L, const char *code) {
  if (luaL_loadstring(L, code) != LUA_OK) {
    fprintf(stderr, "syntax error: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return LUA_ERRSYNTAX;
  }
  return sl_call(L, 0, 0);
}

/* Reads global name as an integer (LLONG_MIN when it is not one). */
static inline long long h_int(lua_State *L, const char *name) {
  lua_getglobal(L, name);
  long long v =
      lua_isinteger(L, -1) ? (long long)lua_tointeger(L, -1) : (-9223372036854775807LL - 1);
  lua_pop(L, 1);
  return v;
}

/* Reads global name as a string into a static buffer ("" when it is not one). */
static inline const char *h_str(lua_State *L, const char *name) {
  static char buf[1024];
  lua_getglobal(L, name);
  const char *s = lua_tostring(L, -1);
  snprintf(buf, sizeof buf, "%s", s ? s : "");
  lua_pop(L, 1);
  return buf;
}

/* Closes the engine and checks that the loop closed cleanly. */
static inline void h_close(lua_State *L) {
  int rc = sl_engine_close(L);
  if (rc != 0) {
    h_failures++;
    fprintf(stderr, "sl_engine_close: the loop did not close cleanly (%d)\n", rc);
  }
  h_checks++;
}

static inline int h_done(const char *name) {
  printf("%s: %d checks, %d failed\n", name, h_checks, h_failures);
  return h_failures == 0 ? 0 : 1;
}

#endif
