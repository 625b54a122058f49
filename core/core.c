/* core.c: the engine itself and the Lua module sluice.core.
 *
 * Owns the one libuv loop and the C->Lua entry point (sl_call), and exposes the smallest
 * primitives the Lua scheduler (lua/sluice/init.lua) is built on: one-shot and repeating
 * timers, the monotonic clock, interrupt (SIGINT/SIGTERM) delivery, loop control, the
 * environment, and a diagnostic thread-pool job. Policy (tasks, queues, cancellation)
 * lives in Lua.
 */
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sluice.h"
#include "threads.h"

extern char **environ;

#define TIMER_MT "sluice.timer"

static struct {
  uv_loop_t *loop;
  lua_State *L;
  int error_handler_ref;
  /* interrupts */
  uv_async_t interrupt_async;
  int interrupt_ref;
  volatile sig_atomic_t interrupts;      /* SIGINTs received */
  volatile sig_atomic_t delivered;       /* how many were handed to Lua */
  volatile sig_atomic_t hard_exit_on_2;  /* run mode: second SIGINT exits at once */
  volatile sig_atomic_t in_lua;          /* Lua code is running (for the REPL's hook) */
  volatile sig_atomic_t interrupt_lua;   /* REPL mode: interrupt running Lua code */
  volatile sig_atomic_t handlers_set;    /* our SIGINT/SIGTERM handlers are installed */
  volatile sig_atomic_t has_lua_handler; /* core.on_interrupt was called */
  volatile sig_atomic_t last_signal;     /* the latest of SIGINT/SIGTERM received */
  /* The task coroutine core.resume is running, or NULL: the REPL's Ctrl-C hook goes there,
   * because a hook set on the main state does not reach a coroutine that is running. */
  lua_State *volatile running;
  /* core.defer: functions to run after the loop has polled for I/O once more */
  uv_check_t defer_check;
  uv_idle_t defer_idle; /* active while something is deferred: poll must not block */
  int defer_ready;
  int *defer_refs, defer_len, defer_cap;
} engine = {.error_handler_ref = LUA_NOREF, .interrupt_ref = LUA_NOREF};

uv_loop_t *sl_loop(lua_State *L) {
  (void)L;
  return engine.loop;
}

lua_State *sl_main_state(void) { return engine.L; }

double sl_now(void) { return (double)uv_hrtime() / 1e9; }

int sl_ref(lua_State *L, int idx) {
  lua_pushvalue(L, idx);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

void sl_unref(lua_State *L, int *ref) {
  if (*ref != LUA_NOREF && *ref != LUA_REFNIL) luaL_unref(L, LUA_REGISTRYINDEX, *ref);
  *ref = LUA_NOREF;
}

void sl_push_ref(lua_State *L, int ref) { lua_rawgeti(L, LUA_REGISTRYINDEX, ref); }

int sl_push_uv_error(lua_State *L, int uv_err, const char *what) {
  lua_pushnil(L);
  if (what)
    lua_pushfstring(L, "%s: %s", what, uv_strerror(uv_err));
  else
    lua_pushstring(L, uv_strerror(uv_err));
  lua_pushstring(L, uv_err_name(uv_err));
  return 3;
}

int sl_push_fail(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  lua_pushnil(L);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  if (!code) return 2;
  lua_pushstring(L, code);
  return 3;
}

void sl_check_open(lua_State *L, const void *ptr, const char *what) {
  if (!ptr) luaL_error(L, "attempt to use a closed %s", what);
}

/* ---- the C->Lua entry point ------------------------------------------------------------ */

/* Message handler: strings get a traceback; other error values (task errors, the
 * cancellation marker) pass through untouched because they carry their own. */
static int traceback_handler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) return 1;
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Installed by the SIGINT handler on the running task (REPL mode) when Lua code keeps the
 * loop busy: raises in that code. The interrupt counts as delivered, so the Lua handler does
 * not see it a second time. */
static void lstop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  if (engine.delivered < engine.interrupts) engine.delivered++;
  luaL_error(L, "interrupted!");
}

int sl_call(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback_handler);
  lua_insert(L, base);
  sig_atomic_t was_in_lua = engine.in_lua;
  engine.in_lua = 1;
  int status = lua_pcall(L, nargs, nresults, base);
  engine.in_lua = was_in_lua;
  lua_remove(L, base);
  if (status != LUA_OK) sl_report_error(L, "callback");
  return status;
}

void sl_report_error(lua_State *L, const char *where) {
  if (engine.error_handler_ref != LUA_NOREF) {
    sl_push_ref(L, engine.error_handler_ref);
    lua_insert(L, -2);
    lua_pushstring(L, where ? where : "?");
    if (lua_pcall(L, 2, 0, 0) == LUA_OK) return;
  }
  const char *msg = luaL_tolstring(L, -1, NULL);
  fprintf(stderr, "sluice: error in %s: %s\n", where ? where : "?", msg);
  lua_pop(L, 2);
}

/* core.set_error_handler(fn): fn(err, where) receives errors raised by callbacks that no
 * task caught. */
static int l_set_error_handler(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  sl_unref(L, &engine.error_handler_ref);
  engine.error_handler_ref = sl_ref(L, 1);
  return 0;
}

/* ---- timers ---------------------------------------------------------------------------- */

typedef struct sl_timer sl_timer;
typedef struct timer_ud {
  sl_timer *t; /* NULL once closed */
} timer_ud;

struct sl_timer {
  uv_timer_t handle;
  int callback_ref;
  int self_ref; /* keeps the userdata alive while the timer is active */
  int oneshot;  /* close after the first expiry */
  double due;   /* sl_now() deadline of a non-repeating start; 0 when not applicable */
  timer_ud *ud;
};

static void timer_closed(uv_handle_t *h) { free(h->data); }

/* Closes a timer; idempotent. Drops the references so both sides can be collected. */
static void timer_close(lua_State *L, sl_timer *t) {
  if (!t) return;
  if (t->ud) t->ud->t = NULL;
  t->ud = NULL;
  sl_unref(L, &t->callback_ref);
  sl_unref(L, &t->self_ref);
  uv_close((uv_handle_t *)&t->handle, timer_closed);
}

static void on_timer(uv_timer_t *h) {
  sl_timer *t = h->data;
  lua_State *L = engine.L;
  /* libuv's loop clock is whole milliseconds (and may be the coarse clock), so a timer can
   * expire up to ~2 ms before the deadline as sl_now() sees it; wait out the rest. */
  double left = t->due - sl_now();
  if (t->due > 0 && left > 0) {
    uv_timer_start(h, on_timer, (uint64_t)(left * 1000.0) + 1, 0);
    return;
  }
  t->due = 0;
  sl_push_ref(L, t->callback_ref);
  if (t->oneshot) {
    timer_close(L, t); /* the callback is on the stack; the handle frees after it */
  } else if (uv_timer_get_repeat(h) == 0) {
    sl_unref(L, &t->self_ref); /* inactive now: collectable */
  }
  sl_call(L, 0, 0);
}

static sl_timer *check_timer(lua_State *L) {
  timer_ud *ud = luaL_checkudata(L, 1, TIMER_MT);
  sl_check_open(L, ud->t, "timer");
  return ud->t;
}

static uint64_t seconds_to_ms(lua_State *L, int idx) {
  lua_Number s = luaL_checknumber(L, idx);
  luaL_argcheck(L, s >= 0, idx, "seconds must be >= 0");
  /* Round up so a wait is never shorter than asked; 0 stays 0 (next iteration). Anything
   * beyond about 30000 years (math.huge included) means "never". */
  double ms = s * 1000.0;
  if (ms > 1e15) return (uint64_t)1e15;
  uint64_t r = (uint64_t)ms;
  if ((double)r < ms) r++;
  return r;
}

static timer_ud *new_timer(lua_State *L, int oneshot) {
  timer_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->t = NULL;
  luaL_setmetatable(L, TIMER_MT);
  sl_timer *t = calloc(1, sizeof *t);
  if (!t) luaL_error(L, "timer: out of memory");
  uv_timer_init(engine.loop, &t->handle);
  t->handle.data = t;
  t->callback_ref = LUA_NOREF;
  t->self_ref = LUA_NOREF;
  t->oneshot = oneshot;
  t->ud = ud;
  ud->t = t;
  return ud;
}

/* core.timer() -> timer: a reusable timer (see :start, :stop, :close). */
static int l_timer(lua_State *L) {
  new_timer(L, 0);
  return 1;
}

/* core.after(seconds, fn) -> timer: calls fn once after seconds; the timer closes itself
 * after firing; :close() before that cancels it. */
static int l_after(lua_State *L) {
  uint64_t ms = seconds_to_ms(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  timer_ud *ud = new_timer(L, 1);
  sl_timer *t = ud->t;
  t->callback_ref = sl_ref(L, 2);
  t->self_ref = sl_ref(L, -1);
  t->due = ms > 0 ? sl_now() + lua_tonumber(L, 1) : 0;
  uv_update_time(engine.loop); /* the cached loop time may be stale while Lua runs */
  uv_timer_start(&t->handle, on_timer, ms, 0);
  return 1;
}

/* ---- deferred calls ------------------------------------------------------------------- */

static void on_defer_idle(uv_idle_t *h) { (void)h; }

/* Check phase (after the I/O poll): runs what was deferred before this iteration's poll.
 * Functions deferred while these run wait for the next iteration, so a task that keeps
 * deferring itself never starves I/O. */
static void on_defer_check(uv_check_t *h) {
  (void)h;
  lua_State *L = engine.L;
  int n = engine.defer_len;
  int *refs = engine.defer_refs;
  engine.defer_refs = NULL;
  engine.defer_len = engine.defer_cap = 0;
  uv_check_stop(&engine.defer_check);
  uv_idle_stop(&engine.defer_idle);
  for (int i = 0; i < n; i++) {
    sl_push_ref(L, refs[i]);
    luaL_unref(L, LUA_REGISTRYINDEX, refs[i]);
    sl_call(L, 0, 0);
  }
  free(refs);
}

/* core.defer(fn): calls fn once, on the next loop iteration after the loop has polled for
 * I/O (unlike a 0 s timer, which libuv may run again in the same timers pass). */
static int l_defer(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (!engine.defer_ready) {
    uv_check_init(engine.loop, &engine.defer_check);
    uv_idle_init(engine.loop, &engine.defer_idle);
    engine.defer_ready = 1;
  }
  if (engine.defer_len == engine.defer_cap) {
    int cap = engine.defer_cap ? engine.defer_cap * 2 : 16;
    int *refs = realloc(engine.defer_refs, sizeof *refs * (size_t)cap);
    if (!refs) return luaL_error(L, "out of memory");
    engine.defer_refs = refs;
    engine.defer_cap = cap;
  }
  engine.defer_refs[engine.defer_len++] = sl_ref(L, 1);
  uv_check_start(&engine.defer_check, on_defer_check);
  uv_idle_start(&engine.defer_idle, on_defer_idle);
  return 0;
}

/* timer:start(seconds, repeat_seconds, fn) */
static int timer_start(lua_State *L) {
  sl_timer *t = check_timer(L);
  uint64_t ms = seconds_to_ms(L, 2);
  uint64_t rep = lua_isnoneornil(L, 3) ? 0 : seconds_to_ms(L, 3);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  sl_unref(L, &t->callback_ref);
  t->callback_ref = sl_ref(L, 4);
  if (t->self_ref == LUA_NOREF) t->self_ref = sl_ref(L, 1);
  t->due = (ms > 0 && rep == 0) ? sl_now() + lua_tonumber(L, 2) : 0;
  uv_update_time(engine.loop);
  uv_timer_start(&t->handle, on_timer, ms, rep);
  return 0;
}

static int timer_stop(lua_State *L) {
  sl_timer *t = check_timer(L);
  uv_timer_stop(&t->handle);
  sl_unref(L, &t->self_ref);
  return 0;
}

static int timer_active(lua_State *L) {
  timer_ud *ud = luaL_checkudata(L, 1, TIMER_MT);
  lua_pushboolean(L, ud->t && uv_is_active((uv_handle_t *)&ud->t->handle));
  return 1;
}

/* __gc, __close and :close share this idempotent function. */
static int timer_gc(lua_State *L) {
  timer_ud *ud = luaL_checkudata(L, 1, TIMER_MT);
  timer_close(L, ud->t);
  return 0;
}

/* ---- interrupts ------------------------------------------------------------------------ */

/* The handlers are installed when the engine starts, so an interrupt that arrives before
 * Lua has registered its handler (while a script is loading) is not lost: it is delivered
 * once the loop runs. When no Lua handler is registered by then, the process ends the way
 * the signal's default action would. Without a Lua handler, or in "run" mode, a second
 * interrupt exits at once with status 130. */
static void on_sigint(int sig) {
  engine.last_signal = sig;
  engine.interrupts++;
  if ((engine.hard_exit_on_2 || !engine.has_lua_handler) && engine.interrupts >= 2) {
    static const char msg[] = "\nsluice: interrupted twice, stopping now\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(130);
  }
  lua_State *co = engine.running;
  if (engine.interrupt_lua && engine.in_lua && co)
    lua_sethook(co, lstop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  uv_async_send(&engine.interrupt_async);
}

static void install_interrupt_handlers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  engine.handlers_set = 1;
}

static void on_interrupt_async(uv_async_t *a) {
  (void)a;
  lua_State *L = engine.L;
  while (engine.delivered < engine.interrupts) {
    if (engine.interrupt_ref == LUA_NOREF) {
      /* Nobody handles interrupts: die of the signal, as without our handler. */
      fflush(stdout);
      signal(engine.last_signal, SIG_DFL);
      raise(engine.last_signal);
      _exit(130);
    }
    engine.delivered++;
    sl_push_ref(L, engine.interrupt_ref);
    lua_pushinteger(L, engine.delivered);
    sl_call(L, 1, 0);
  }
}

/* core.on_interrupt(fn[, mode]): fn(count) runs on the loop for each SIGINT or SIGTERM
 * (also for those that arrived before it was registered).
 * mode "run": a second interrupt exits the process at once with status 130.
 * mode "repl": an interrupt also stops Lua code that is running at that moment. */
static int l_on_interrupt(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  static const char *const modes[] = {"run", "repl", NULL};
  int mode = luaL_checkoption(L, 2, "run", modes);
  sl_unref(L, &engine.interrupt_ref);
  engine.interrupt_ref = sl_ref(L, 1);
  engine.hard_exit_on_2 = mode == 0;
  engine.interrupt_lua = mode == 1;
  engine.has_lua_handler = 1;
  if (!engine.handlers_set) install_interrupt_handlers();
  if (engine.delivered < engine.interrupts) uv_async_send(&engine.interrupt_async);
  return 0;
}

/* core.resume(co, value) -> true | false, err: coroutine.resume for the scheduler. It
 * records the coroutine it runs (see engine.running) and drops the values a task yields,
 * which the scheduler never uses. */
static int l_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co != NULL, 1, "coroutine");
  int st = lua_status(co);
  lua_Debug ar;
  if (co == L ||
      !(st == LUA_YIELD || (st == LUA_OK && lua_getstack(co, 0, &ar) == 0 && lua_gettop(co) > 0))) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "cannot resume a coroutine that is not suspended");
    return 2;
  }
  lua_settop(L, 2);
  lua_xmove(L, co, 1);
  lua_State *prev = engine.running;
  engine.running = co;
  int nres = 0;
  int status = lua_resume(co, L, 1, &nres);
  engine.running = prev;
  if (status == LUA_OK || status == LUA_YIELD) {
    lua_pop(co, nres);
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_xmove(co, L, 1); /* the error value */
  return 2;
}

/* core.interrupt_lua(on): arm or disarm interrupting running Lua code (REPL mode). */
static int l_interrupt_lua(lua_State *L) {
  engine.interrupt_lua = lua_toboolean(L, 1);
  return 0;
}

/* ---- clock, loop, environment ---------------------------------------------------------- */

static int l_now(lua_State *L) {
  lua_pushnumber(L, sl_now());
  return 1;
}

static int l_time(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
  return 1;
}

static int l_stop(lua_State *L) {
  (void)L;
  uv_stop(engine.loop);
  return 0;
}

/* core.handles() -> {type, ...}: the active handles, for diagnostics and tests. */
static void walk_cb(uv_handle_t *h, void *arg) {
  lua_State *L = arg;
  if (!uv_is_active(h) || uv_is_closing(h) || !uv_has_ref(h)) return;
  lua_pushstring(L, uv_handle_type_name(uv_handle_get_type(h)));
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

static int l_handles(lua_State *L) {
  lua_newtable(L);
  uv_walk(engine.loop, walk_cb, L);
  return 1;
}

static int l_environ(lua_State *L) {
  lua_newtable(L);
  for (char **e = environ; *e; e++) {
    const char *eq = strchr(*e, '=');
    if (!eq) continue;
    lua_pushlstring(L, *e, (size_t)(eq - *e));
    lua_pushstring(L, eq + 1);
    lua_rawset(L, -3);
  }
  return 1;
}

/* cwd() -> the process's working directory, or nil, message. */
static int l_cwd(lua_State *L) {
  char buf[4096];
  size_t len = sizeof buf;
  int rc = uv_cwd(buf, &len);
  if (rc != 0) return sl_push_fail(L, NULL, "%s", uv_strerror(rc));
  lua_pushlstring(L, buf, len);
  return 1;
}

static int l_cpu_time(lua_State *L) {
  uv_rusage_t ru;
  if (uv_getrusage(&ru) != 0) return sl_push_fail(L, NULL, "getrusage failed");
  lua_pushnumber(L, (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                        (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
  lua_pushinteger(L, (lua_Integer)ru.ru_maxrss); /* KiB */
  return 2;
}

/* malloc_stats() -> {arena, mmap, in_use, free, top} in bytes (glibc's mallinfo2 over all its
 * arenas: memory taken from the system by brk/arena heaps, by mmap for large blocks, what is
 * allocated, what is free inside the arenas, and the releasable top of the main arena), or
 * nil where the C library has no mallinfo2. A diagnostic (bench/live_long.sh); it walks the
 * arenas' free lists, so it costs about a millisecond on a fragmented heap. */
static int l_malloc_stats(lua_State *L) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  struct mallinfo2 mi = mallinfo2();
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)mi.arena);
  lua_setfield(L, -2, "arena");
  lua_pushinteger(L, (lua_Integer)mi.hblkhd);
  lua_setfield(L, -2, "mmap");
  lua_pushinteger(L, (lua_Integer)mi.uordblks);
  lua_setfield(L, -2, "in_use");
  lua_pushinteger(L, (lua_Integer)mi.fordblks);
  lua_setfield(L, -2, "free");
  lua_pushinteger(L, (lua_Integer)mi.keepcost);
  lua_setfield(L, -2, "top");
#else
  lua_pushnil(L);
#endif
  return 1;
}

static int l_exit_now(lua_State *L) {
  int code = (int)luaL_optinteger(L, 1, 0);
  fflush(stdout);
  fflush(stderr);
  _exit(code);
}

/* ---- engine lifetime ------------------------------------------------------------------- */

int sl_engine_init(lua_State *L, uv_loop_t *loop) {
  engine.loop = loop;
  engine.L = L;
  engine.error_handler_ref = LUA_NOREF;
  engine.interrupt_ref = LUA_NOREF;
  engine.interrupts = engine.delivered = 0;
  engine.hard_exit_on_2 = engine.in_lua = engine.interrupt_lua = 0;
  engine.has_lua_handler = 0;
  engine.running = NULL;
  engine.defer_ready = 0;
  free(engine.defer_refs);
  engine.defer_refs = NULL;
  engine.defer_len = engine.defer_cap = 0;
  signal(SIGPIPE, SIG_IGN);
  int rc = uv_async_init(loop, &engine.interrupt_async, on_interrupt_async);
  if (rc != 0) return rc;
  uv_unref((uv_handle_t *)&engine.interrupt_async);
  install_interrupt_handlers();
  return 0;
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, h->close_cb ? h->close_cb : NULL);
}

int sl_engine_close(lua_State *L) {
  if (engine.handlers_set) {
    /* The handlers use the async handle closed below. */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    engine.handlers_set = 0;
  }
  engine.has_lua_handler = 0;
  sl_threads_shutdown();
  engine.L = NULL;
  engine.running = NULL;
  sl_state_close(L);       /* finalizers close the handles Lua owns */
  free(engine.defer_refs); /* their references died with the state */
  engine.defer_refs = NULL;
  engine.defer_len = engine.defer_cap = 0;
  uv_walk(engine.loop, close_walk_cb, NULL);
  uv_run(engine.loop, UV_RUN_DEFAULT);
  return uv_loop_close(engine.loop);
}

int luaopen_sluice_core(lua_State *L) {
  static const luaL_Reg timer_methods[] = {{"start", timer_start},
                                           {"stop", timer_stop},
                                           {"active", timer_active},
                                           {"close", timer_gc},
                                           {NULL, NULL}};
  luaL_newmetatable(L, TIMER_MT);
  luaL_newlib(L, timer_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, timer_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, timer_gc);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);

  static const luaL_Reg funcs[] = {{"set_error_handler", l_set_error_handler},
                                   {"timer", l_timer},
                                   {"after", l_after},
                                   {"defer", l_defer},
                                   {"on_interrupt", l_on_interrupt},
                                   {"interrupt_lua", l_interrupt_lua},
                                   {"now", l_now},
                                   {"time", l_time},
                                   {"stop", l_stop},
                                   {"handles", l_handles},
                                   {"environ", l_environ},
                                   {"cwd", l_cwd},
                                   {"cpu_time", l_cpu_time},
                                   {"malloc_stats", l_malloc_stats},
                                   {"exit_now", l_exit_now},
                                   {"resume", l_resume},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_pushliteral(L, SLUICE_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}
