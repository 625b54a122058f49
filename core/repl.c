/* repl.c: GNU readline driven by the loop (Lua module sluice.core.repl).
 *
 * readline's callback interface reads one character at a time when a uv_poll on stdin says
 * input is ready, so the loop keeps running timers, transfers and tasks while the prompt
 * waits. The Lua REPL (lua/sluice/repl.lua) decides what a line means; this file only owns
 * the terminal: prompt, line editing, history, and printing above the prompt.
 */
#include "sluice.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

static struct {
  lua_State *L;
  uv_poll_t poll;
  int poll_open;
  int installed; /* readline's line handler is installed (the prompt is shown) */
  int line_ref;
  char *prompt;
} repl = {.line_ref = LUA_NOREF};

static void line_handler(char *line) {
  lua_State *L = repl.L;
  /* readline wants the handler removed before the application prints at length; the Lua
   * side re-shows the prompt when it is ready for the next line. */
  rl_callback_handler_remove();
  repl.installed = 0;
  sl_push_ref(L, repl.line_ref);
  if (line)
    lua_pushstring(L, line);
  else
    lua_pushnil(L);
  free(line);
  sl_call(L, 1, 0);
}

static void on_stdin(uv_poll_t *h, int status, int events) {
  (void)h;
  (void)events;
  if (status < 0) return;
  if (repl.installed) {
    rl_callback_read_char();
  } else {
    /* Input typed while a line runs waits in the terminal; stop polling until the prompt
     * returns so the loop does not spin. */
    uv_poll_stop(&repl.poll);
  }
}

static void poll_closed(uv_handle_t *h) {
  (void)h;
  repl.poll_open = 0;
}

/* repl.start(on_line): starts reading stdin; on_line(line) is called for each line, with
 * nil at end of input. The prompt is shown by repl.show(prompt). */
static int l_start(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  repl.L = sl_main_state();
  sl_unref(L, &repl.line_ref);
  repl.line_ref = sl_ref(L, 1);
  if (!repl.poll_open) {
    int rc = uv_poll_init(sl_loop(L), &repl.poll, STDIN_FILENO);
    if (rc != 0) return sl_push_uv_error(L, rc, "stdin");
    repl.poll_open = 1;
  }
  rl_catch_signals = 0;
  rl_readline_name = "sluice";
  lua_pushboolean(L, 1);
  return 1;
}

/* repl.show(prompt): shows the prompt and accepts a line. */
static int l_show(lua_State *L) {
  const char *prompt = luaL_checkstring(L, 1);
  free(repl.prompt);
  repl.prompt = strdup(prompt);
  if (repl.installed) rl_callback_handler_remove();
  rl_callback_handler_install(repl.prompt, line_handler);
  repl.installed = 1;
  if (repl.poll_open) uv_poll_start(&repl.poll, UV_READABLE, on_stdin);
  return 0;
}

/* repl.print(text): prints text on its own lines above the prompt, keeping what the user
 * has typed so far. Without a prompt it just writes to stdout. */
static int l_print(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  if (!repl.installed) {
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
  }
  char *saved_line = rl_copy_text(0, rl_end);
  int saved_point = rl_point;
  rl_save_prompt();
  rl_replace_line("", 0);
  rl_redisplay();
  fwrite(text, 1, len, stdout);
  fflush(stdout);
  rl_restore_prompt();
  rl_replace_line(saved_line, 0);
  rl_point = saved_point;
  rl_forced_update_display();
  free(saved_line);
  return 0;
}

/* repl.clear_line(): drops the partly typed line (Ctrl-C at the prompt). */
static int l_clear_line(lua_State *L) {
  (void)L;
  if (!repl.installed) return 0;
  rl_replace_line("", 0);
  fputs("^C\n", stdout);
  rl_on_new_line();
  rl_redisplay();
  return 0;
}

static int l_history_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  using_history();
  lua_pushboolean(L, read_history(path) == 0);
  return 1;
}

static int l_history_add(lua_State *L) {
  add_history(luaL_checkstring(L, 1));
  return 0;
}

static int l_history_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int limit = (int)luaL_optinteger(L, 2, 1000);
  int rc = write_history(path);
  if (rc == 0) history_truncate_file(path, limit);
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* repl.stop(): restores the terminal and stops reading stdin. Idempotent. */
static int l_stop(lua_State *L) {
  if (repl.installed) rl_callback_handler_remove();
  repl.installed = 0;
  if (repl.poll_open && !uv_is_closing((uv_handle_t *)&repl.poll))
    uv_close((uv_handle_t *)&repl.poll, poll_closed);
  sl_unref(L, &repl.line_ref);
  free(repl.prompt);
  repl.prompt = NULL;
  return 0;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 0)));
  return 1;
}

int luaopen_sluice_repl(lua_State *L) {
  static const luaL_Reg funcs[] = {{"start", l_start},
                                   {"show", l_show},
                                   {"print", l_print},
                                   {"clear_line", l_clear_line},
                                   {"history_load", l_history_load},
                                   {"history_add", l_history_add},
                                   {"history_save", l_history_save},
                                   {"stop", l_stop},
                                   {"isatty", l_isatty},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
