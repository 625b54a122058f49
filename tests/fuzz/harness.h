/* harness.h: what every libFuzzer target of tests/fuzz shares: the engine's loop and Lua state
 * set up as core/main.c does (sl_open_libs: standard libraries, the C modules, lua-cjson, lua/
 * on the path, plus tests/fuzz/ for targets.lua), and Lua line coverage fed to libFuzzer.
 *
 * Lua coverage: libFuzzer sees the C code's edges through its instrumentation, but not which
 * lines of a Lua parser an input reached (the interpreter is Debian's, not instrumented). A
 * line hook hashes (function, previous line, line) into a counter array in the section
 * __libfuzzer_extra_counters, which libFuzzer reads as more coverage: an input that takes a
 * new path through Lua code is kept in the corpus like one that takes a new C edge.
 *
 * The verdict on a Lua target (fuzz_run_lua): the function returns normally, or it raised. A
 * raise is a finding (the harness prints it and aborts, so libFuzzer saves the input): the
 * parsers are meant to return nil, message for bad input (docs/fuzz.md says which API raises
 * by design; targets.lua catches exactly those).
 */
#ifndef SLUICE_FUZZ_HARNESS_H
#define SLUICE_FUZZ_HARNESS_H

#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

#define FUZZ_COUNTERS (1u << 16)
__attribute__((section("__libfuzzer_extra_counters"), used)) static uint8_t fuzz_lua_counters[FUZZ_COUNTERS];

static uv_loop_t fuzz_loop;
static lua_State *fuzz_L;
static uintptr_t fuzz_prev;

static void fuzz_line_hook(lua_State *L, lua_Debug *ar) {
  if (!lua_getinfo(L, "S", ar)) return;
  uintptr_t here = ((uintptr_t)(const void *)ar->source * 31u) ^ (uintptr_t)ar->currentline * 2654435761u;
  uintptr_t edge = here ^ (fuzz_prev >> 1);
  fuzz_prev = here;
  uint8_t *c = &fuzz_lua_counters[(edge ^ (edge >> 16)) & (FUZZ_COUNTERS - 1)];
  if (*c < 255) (*c)++;
}

/* Sets up the loop and the state; requires tests/fuzz/targets.lua as the global T. */
static inline lua_State *fuzz_setup(void) {
  if (fuzz_L) return fuzz_L;
  uv_loop_init(&fuzz_loop);
  lua_State *L = sl_state_new();
  if (!L || sl_engine_init(L, &fuzz_loop) != 0) {
    fprintf(stderr, "fuzz: cannot set up the engine\n");
    abort();
  }
  sl_open_libs(L, sl_all_modules,
               SLUICE_SOURCE_DIR "/lua/?.lua;" SLUICE_SOURCE_DIR "/lua/?/init.lua;" SLUICE_SOURCE_DIR
                                 "/tests/fuzz/?.lua;",
               SLUICE_SOURCE_DIR "/lua", SLUICE_SOURCE_DIR);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "targets");
  if (sl_call(L, 1, 1) != LUA_OK) abort();
  lua_setglobal(L, "T");
  if (!getenv("SLUICE_FUZZ_NO_LUA_COVERAGE")) lua_sethook(L, fuzz_line_hook, LUA_MASKLINE, 0);
  fuzz_L = L;
  return L;
}

static inline int fuzz_traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = lua_pushfstring(L, "(a %s value was raised, not a message)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Calls T[name](data) and aborts on a raise (a finding). */
static inline void fuzz_run_lua(const char *name, const uint8_t *data, size_t size) {
  lua_State *L = fuzz_setup();
  int top = lua_gettop(L);
  lua_pushcfunction(L, fuzz_traceback);
  lua_getglobal(L, "T");
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  lua_pushlstring(L, (const char *)data, size);
  fuzz_prev = 0;
  if (lua_pcall(L, 1, 0, top + 1) != LUA_OK) {
    fprintf(stderr, "fuzz %s: the Lua code raised: %s\n", name, lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, top);
  lua_gc(L, LUA_GCSTEP, 0);
}

#endif
