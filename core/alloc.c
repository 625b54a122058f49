/* alloc.c: the main Lua state: its allocator, panic and warning functions.
 *
 * The state uses the C library's realloc/free. A pooled allocator (per-size free lists on
 * 64 KiB slabs, no locks) lived here for a while: on a fresh heap it was 3-8% faster than
 * glibc's malloc, but after a large job its free lists were scattered over the whole heap
 * and later allocation-heavy work ran 2.2x slower, where glibc's malloc stays as fast (it
 * coalesces freed blocks). A long-lived process (the REPL, a live monitor) is worse off with
 * the pool, so it went. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

/* The lua_Alloc of the state (see the manual's lua_Alloc for the contract). */
static void *system_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}

/* The panic and warning functions luaL_newstate would install (lauxlib keeps them static). */
static int on_panic(lua_State *L) {
  const char *msg =
      lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error object is not a string";
  fprintf(stderr, "sluice: PANIC: unprotected error in call to Lua API (%s)\n", msg);
  fflush(stderr);
  return 0; /* then Lua aborts */
}

static void warn_off(void *ud, const char *msg, int tocont);
static void warn_on(void *ud, const char *msg, int tocont);

static void warn_more(void *ud, const char *msg, int tocont) {
  lua_State *L = ud;
  fputs(msg, stderr);
  if (tocont) {
    lua_setwarnf(L, warn_more, L);
  } else {
    fputs("\n", stderr);
    lua_setwarnf(L, warn_on, L);
  }
}

/* Returns 1 when msg was a control message ("@on", "@off"), which it then applies. */
static int warn_control(lua_State *L, const char *msg, int tocont) {
  if (tocont || *msg != '@') return 0;
  if (strcmp(msg, "@off") == 0)
    lua_setwarnf(L, warn_off, L);
  else if (strcmp(msg, "@on") == 0)
    lua_setwarnf(L, warn_on, L);
  return 1;
}

static void warn_off(void *ud, const char *msg, int tocont) { warn_control(ud, msg, tocont); }

static void warn_on(void *ud, const char *msg, int tocont) {
  if (warn_control(ud, msg, tocont)) return;
  fputs("Lua warning: ", stderr);
  warn_more(ud, msg, tocont);
}

lua_State *sl_state_new(void) {
  lua_State *L = lua_newstate(system_alloc, NULL);
  if (!L) return NULL;
  lua_atpanic(L, on_panic);
  lua_setwarnf(L, warn_off, L);
  /* A cycle starts when the heap is 1.5 times what the last one left live (Lua's default, 2,
   * let a two-hour lecture's heap reach 22 MB for 11 MB live; at 1.5 it peaks at 17 MB, in
   * the same wall time: bench/lecture_long.sh). At 1 the collector never rests, and that
   * run took twice as long. */
  lua_gc(L, LUA_GCINC, 150, 0, 0);
  return L;
}

void sl_state_close(lua_State *L) { lua_close(L); }
