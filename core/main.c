/* main.c: the sluice executable.
 *
 * Sets up the loop and the Lua state (sl_open_libs: standard libraries, the C modules found
 * by the build, lua-cjson, and the path to lua/), then hands the command line to
 * lua/sluice/app/cli.lua, runs the loop until the command is done, and closes everything before
 * exiting.
 */
#include <lualib.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sluice.h"

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* Finds lua/: $SLUICE_LUA_DIR, then <exe>/../share/sluice/lua (an install), then the
 * source tree the binary was built from. Writes the share directory (lua/'s parent, which
 * also holds pipelines/ and web/) to share. */
static void find_dirs(char *lua_dir, char *share, size_t size) {
  const char *env = getenv("SLUICE_LUA_DIR");
  if (env && *env) {
    snprintf(lua_dir, size, "%s", env);
  } else {
    char exe[2048];
    size_t len = sizeof exe;
    char probe[4200];
    lua_dir[0] = '\0';
    if (uv_exepath(exe, &len) == 0) {
      char *slash = strrchr(exe, '/');
      if (slash) *slash = '\0';
      snprintf(probe, sizeof probe, "%s/../share/sluice/lua/sluice/init.lua", exe);
      if (file_exists(probe)) snprintf(lua_dir, size, "%s/../share/sluice/lua", exe);
    }
    if (!lua_dir[0]) snprintf(lua_dir, size, "%s/lua", SLUICE_SOURCE_DIR);
  }
  snprintf(share, size, "%s/..", lua_dir);
}

static int setup(lua_State *L) {
  char lua_dir[4096], share[4096], path[8300];
  find_dirs(lua_dir, share, sizeof lua_dir);
  snprintf(path, sizeof path, "%s/?.lua;%s/?/init.lua;", lua_dir, lua_dir);
  sl_open_libs(L, sl_all_modules, path, lua_dir, share);
  return 0;
}

/* Calls cli[fname](args...) and returns its integer result, or -1 when it returned nil,
 * or 2 when it raised (the error has been reported). */
static int call_cli(lua_State *L, const char *fname, int argc, char **argv) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "sluice.app.cli");
  if (sl_call(L, 1, 1) != LUA_OK) return 2;
  lua_getfield(L, -1, fname);
  lua_remove(L, -2);
  for (int i = 0; i < argc; i++) lua_pushstring(L, argv[i]);
  if (sl_call(L, argc, 1) != LUA_OK) return 2;
  int code = lua_isnil(L, -1) ? -1 : (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return code;
}

/* The allocator's policy for a long run. Each open of a long MP4 allocates its sample index
 * (megabytes for two hours: every video and audio packet) and frees it on close; with glibc's
 * defaults those blocks came from per-thread arenas whose freed space stays resident, and
 * the mmap threshold rises to the largest block ever freed, so a two-hour lecture (a picture
 * grabbed per slide, each an open) ended near twice the peak RSS of a 30-minute one. A fixed
 * threshold of 4 MB gives such blocks back on free (decoded frames, pooled by FFmpeg, stay
 * below it) and four arenas bound the rest. MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ in the
 * environment still win. */
static void allocator_policy(void) {
  if (!getenv("MALLOC_ARENA_MAX")) mallopt(M_ARENA_MAX, 4);
  if (!getenv("MALLOC_MMAP_THRESHOLD_")) mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
}

int main(int argc, char **argv) {
  allocator_policy();
  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) {
    fprintf(stderr, "sluice: cannot create the event loop\n");
    return 2;
  }
  lua_State *L = sl_state_new();
  if (!L) {
    fprintf(stderr, "sluice: cannot create the Lua state\n");
    return 2;
  }
  if (sl_engine_init(L, &loop) != 0) {
    fprintf(stderr, "sluice: cannot initialise the engine\n");
    return 2;
  }
  setup(L);
  int code = call_cli(L, "main", argc - 1, argv + 1);
  if (code < 0) {
    uv_run(&loop, UV_RUN_DEFAULT);
    code = call_cli(L, "finish", 0, NULL);
    if (code < 0) code = 0;
  }
  fflush(stdout);
  if (sl_engine_close(L) != 0 && getenv("SLUICE_CHECK_LOOP")) {
    fprintf(stderr, "sluice: the loop did not close cleanly\n");
    if (code == 0) code = 3;
  }
  return code;
}
