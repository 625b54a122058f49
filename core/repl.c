/* repl.c: GNU readline driven by the loop (Lua module sluice.core.repl).
 *
 * readline's callback interface reads keys when a uv_poll on stdin says input is ready, so
 * the loop keeps running timers, transfers and tasks while the prompt waits. The Lua REPL
 * (lua/sluice/app/repl.lua) decides what a line means; this file only owns the terminal:
 * prompt, line editing, history, and printing above the prompt.
 *
 * readline stays installed from repl.start to repl.stop. A finished line is queued and
 * handed to Lua from an idle callback (never from inside readline, which is not
 * reentrant); while Lua works on it the prompt is empty and stdin is not polled, so keys
 * typed meanwhile wait in the terminal. readline may already have read keys beyond the
 * line (typed ahead or pasted): it turns them into further queued lines, which Lua gets one
 * at a time, each after it has shown the next prompt.
 *
 * Tab completion: readline asks for the word before the cursor; a Lua function set with
 * repl.set_completer(fn) is called with it (fn(word, line) -> list of whole words that may
 * replace it) and readline shows or inserts them. Only the calling is here: what a word may
 * become is the Lua REPL's business.
 */
#include <fcntl.h>
#include <readline/history.h>
#include <readline/readline.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sluice.h"

/* Exported by GNU readline (rlprivate.h): true when readline holds keys it has read but
 * not processed yet. */
extern int _rl_pushed_input_available(void);

#define MAX_QUEUED 256

static struct {
  lua_State *L;
  uv_poll_t poll;
  int poll_open;
  uv_idle_t idle; /* delivers queued lines outside readline's own call stack */
  int idle_open;
  int installed; /* readline's line handler is installed */
  int busy;      /* Lua is working on a line: no prompt, stdin not polled */
  int line_ref;
  int complete_ref; /* the Lua completer, or LUA_NOREF */
  char **cands;     /* the completer's last answer, handed to readline one at a time */
  int ncands, next_cand;
  char *prompt;
  /* Lines readline finished that Lua has not taken yet; a NULL entry is end of input. */
  char *queue[MAX_QUEUED];
  int qhead, qlen;
} repl = {.line_ref = LUA_NOREF, .complete_ref = LUA_NOREF};

static void on_stdin(uv_poll_t *h, int status, int events);

static void start_idle(void);

static void free_cands(void) {
  for (int i = 0; i < repl.ncands; i++) free(repl.cands[i]);
  free(repl.cands);
  repl.cands = NULL;
  repl.ncands = repl.next_cand = 0;
}

/* readline's generator: the completer's answers, one per call, then NULL. */
static char *next_candidate(const char *text, int state) {
  (void)text;
  if (state == 0) repl.next_cand = 0;
  if (repl.next_cand >= repl.ncands) return NULL;
  return strdup(repl.cands[repl.next_cand++]);
}

/* readline's completion hook: asks the Lua completer about the word text (line[start..end)). */
static char **complete(const char *text, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1; /* never fall back to file names */
  if (repl.complete_ref == LUA_NOREF || !repl.L) return NULL;
  lua_State *L = repl.L;
  free_cands();
  sl_push_ref(L, repl.complete_ref);
  lua_pushstring(L, text);
  lua_pushstring(L, rl_line_buffer ? rl_line_buffer : "");
  if (sl_call(L, 2, 1) != LUA_OK) return NULL;
  if (lua_istable(L, -1)) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    if (n > 10000) n = 10000;
    repl.cands = calloc(n > 0 ? (size_t)n : 1, sizeof *repl.cands);
    for (lua_Integer i = 1; repl.cands && i <= n; i++) {
      lua_rawgeti(L, -1, i);
      const char *s = lua_tostring(L, -1);
      if (s && (repl.cands[repl.ncands] = strdup(s))) repl.ncands++;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (repl.ncands == 0) return NULL;
  rl_completion_append_character = '\0'; /* a table's name is followed by "." or ":", not a space */
  return rl_completion_matches(text, next_candidate);
}

static void line_handler(char *line) {
  if (repl.qlen < MAX_QUEUED) {
    repl.queue[(repl.qhead + repl.qlen) % MAX_QUEUED] = line;
    repl.qlen++;
  } else {
    free(line); /* more than MAX_QUEUED lines typed ahead: drop the excess */
  }
  /* readline shows the prompt for the next line when this returns: keep it empty until
   * Lua asks for the next line, and stop reading keys meanwhile. */
  repl.busy = 1;
  rl_set_prompt("");
  if (repl.poll_open) uv_poll_stop(&repl.poll);
  start_idle();
}

static void on_idle(uv_idle_t *h) {
  uv_idle_stop(h);
  if (!repl.qlen || repl.line_ref == LUA_NOREF) return;
  char *line = repl.queue[repl.qhead];
  repl.qhead = (repl.qhead + 1) % MAX_QUEUED;
  repl.qlen--;
  lua_State *L = repl.L;
  sl_push_ref(L, repl.line_ref);
  if (line)
    lua_pushstring(L, line);
  else
    lua_pushnil(L);
  free(line);
  sl_call(L, 1, 0);
}

static void start_idle(void) {
  if (repl.idle_open) uv_idle_start(&repl.idle, on_idle);
}

static void on_stdin(uv_poll_t *h, int status, int events) {
  (void)events;
  if (status < 0 || !repl.installed || repl.busy) {
    uv_poll_stop(h);
    return;
  }
  rl_callback_read_char();
}

static void handle_closed(uv_handle_t *h) {
  if (h == (uv_handle_t *)&repl.poll)
    repl.poll_open = 0;
  else
    repl.idle_open = 0;
}

/* repl.start(on_line): installs readline on stdin (which must be a terminal) with an empty
 * prompt; on_line(line) is called for each line, with nil at end of input. Nothing is read
 * until repl.show(prompt). Returns true, or nil, message, code. */
static int l_start(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  repl.L = sl_main_state();
  if (!repl.poll_open) {
    int rc = uv_poll_init(sl_loop(L), &repl.poll, STDIN_FILENO);
    if (rc != 0) return sl_push_uv_error(L, rc, "stdin");
    repl.poll.data = NULL;
    repl.poll_open = 1;
  }
  if (!repl.idle_open) {
    uv_idle_init(sl_loop(L), &repl.idle);
    repl.idle_open = 1;
  }
  sl_unref(L, &repl.line_ref);
  repl.line_ref = sl_ref(L, 1);
  rl_catch_signals = 0;
  rl_catch_sigwinch = 1;
  rl_readline_name = "sluice";
  rl_attempted_completion_function = complete;
  /* a word is a dotted name: Lua's operators and brackets end it, "." and ":" do not */
  rl_basic_word_break_characters = " \t\n\"'`<>=;|&{}()[],+-*/%^#~";
  rl_completer_word_break_characters = rl_basic_word_break_characters;
  repl.busy = 1;
  if (!repl.installed) rl_callback_handler_install("", line_handler);
  repl.installed = 1;
  lua_pushboolean(L, 1);
  return 1;
}

/* repl.show(prompt): shows the prompt and accepts the next line (a line typed ahead is
 * delivered at once). */
static int l_show(lua_State *L) {
  const char *prompt = luaL_checkstring(L, 1);
  if (!repl.installed) return luaL_error(L, "repl.show: the prompt is not started");
  free(repl.prompt);
  repl.prompt = strdup(prompt);
  repl.busy = 0;
  rl_set_prompt(repl.prompt ? repl.prompt : "");
  rl_on_new_line();
  rl_redisplay();
  if (repl.qlen) {
    /* Typed ahead: readline has shown it already; hand it over on the next iteration. */
    repl.busy = 1;
    start_idle();
    return 0;
  }
  if (repl.poll_open) uv_poll_start(&repl.poll, UV_READABLE, on_stdin);
  /* Keys readline read ahead but has not processed yet do not make stdin readable. */
  if (_rl_pushed_input_available()) rl_callback_read_char();
  return 0;
}

/* repl.set_completer(fn): Tab asks fn(word, line) for the words that may replace word (a
 * list of strings); nil turns completion off. */
static int l_set_completer(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  sl_unref(L, &repl.complete_ref);
  if (!lua_isnoneornil(L, 1)) repl.complete_ref = sl_ref(L, 1);
  return 0;
}

/* repl.print(text): prints text above the prompt, keeping what the user has typed so far.
 * While a line runs (no prompt) it just writes to stdout. */
static int l_print(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  if (!repl.installed || repl.busy) {
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
  rl_on_new_line();
  rl_redisplay();
  free(saved_line);
  return 0;
}

/* repl.clear_line(prompt): Ctrl-C at the prompt: drops the partly typed line and shows
 * prompt on a new line. */
static int l_clear_line(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, NULL);
  if (!repl.installed || repl.busy) return 0;
  rl_callback_sigcleanup(); /* leaves incremental search and the like */
  rl_replace_line("", 1);
  rl_point = rl_end = rl_mark = 0;
  fputs("^C", stdout);
  rl_crlf();
  fflush(stdout);
  if (prompt) {
    free(repl.prompt);
    repl.prompt = strdup(prompt);
    rl_set_prompt(repl.prompt ? repl.prompt : "");
  }
  rl_on_new_line();
  rl_redisplay();
  return 0;
}

static int l_history_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int ok = read_history(path) == 0;
  using_history();
  lua_pushboolean(L, ok);
  return 1;
}

/* repl.history_add(line[, path]): adds line to the history and, with path, appends it to
 * that file at once (so the history survives a crash or a kill). */
static int l_history_add(lua_State *L) {
  const char *line = luaL_checkstring(L, 1);
  const char *path = luaL_optstring(L, 2, NULL);
  add_history(line);
  /* readline set up the line being edited before this entry existed; without this it
   * takes the new entry for the line being edited and, on the next accepted line, "restores"
   * it to that line's original (empty) text. */
  using_history();
  if (path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600); /* append_history needs it */
    if (fd >= 0) close(fd);
    lua_pushboolean(L, fd >= 0 && append_history(1, path) == 0);
    return 1;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* repl.history_save(path[, limit]): writes the whole history, keeping the last limit
 * entries (default 1000). */
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
  repl.busy = 0;
  if (repl.poll_open && !uv_is_closing((uv_handle_t *)&repl.poll))
    uv_close((uv_handle_t *)&repl.poll, handle_closed);
  if (repl.idle_open && !uv_is_closing((uv_handle_t *)&repl.idle))
    uv_close((uv_handle_t *)&repl.idle, handle_closed);
  while (repl.qlen) {
    free(repl.queue[repl.qhead]);
    repl.qhead = (repl.qhead + 1) % MAX_QUEUED;
    repl.qlen--;
  }
  sl_unref(L, &repl.line_ref);
  sl_unref(L, &repl.complete_ref);
  free_cands();
  free(repl.prompt);
  repl.prompt = NULL;
  return 0;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 0)));
  return 1;
}

/* Finalizer of a sentinel that lives as long as the module: leaves the terminal as it was
 * and closes the handles when the state closes without repl.stop (an error, os.exit). */
static int repl_gc(lua_State *L) {
  l_stop(L);
  return 0;
}

int luaopen_sluice_repl(lua_State *L) {
  lua_newuserdatauv(L, 1, 0);
  lua_newtable(L);
  lua_pushcfunction(L, repl_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, "sluice.repl.sentinel");
  static const luaL_Reg funcs[] = {{"start", l_start},
                                   {"show", l_show},
                                   {"print", l_print},
                                   {"clear_line", l_clear_line},
                                   {"set_completer", l_set_completer},
                                   {"history_load", l_history_load},
                                   {"history_add", l_history_add},
                                   {"history_save", l_history_save},
                                   {"stop", l_stop},
                                   {"isatty", l_isatty},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
