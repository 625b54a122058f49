/* proc.c: subprocesses on the loop (Lua module sluice.core.proc).
 *
 * proc.spawn{file=, args=, cwd=, env=, stdin=bool, on_stdout=fn, on_stderr=fn, on_exit=fn}
 * starts a program with uv_spawn (never through a shell) and streams its output to the
 * callbacks as it arrives. on_exit(code, signal) is called once, after the process has
 * exited and both output pipes reached end of file, so every byte of output is delivered
 * before the exit. The Lua library builds sluice.exec and model workers on this.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

#define PROC_MT "sluice.proc"

typedef struct sl_proc sl_proc;
typedef struct proc_ud {
  sl_proc *p;
} proc_ud;

struct sl_proc {
  uv_process_t process;
  uv_pipe_t in, out, err;
  int has_in;
  int in_closing;   /* close_stdin was called: a shutdown (then close) is under way */
  int open_handles; /* handles not yet closed; the struct is freed when it reaches 0 */
  int exited, out_eof, err_eof, exit_reported;
  int64_t exit_status;
  int term_signal;
  int on_stdout_ref, on_stderr_ref, on_exit_ref, self_ref;
  proc_ud *ud;
  lua_State *L;
};

typedef struct write_req {
  uv_write_t req;
  int callback_ref;
  sl_proc *p;
  char data[];
} write_req;

static void handle_closed(uv_handle_t *h) {
  sl_proc *p = h->data;
  if (--p->open_handles == 0) free(p);
}

static void close_one(uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, handle_closed);
}

/* Releases the Lua side of p and closes its handles; idempotent. */
static void proc_release(sl_proc *p) {
  lua_State *L = p->L;
  if (p->ud) p->ud->p = NULL;
  p->ud = NULL;
  sl_unref(L, &p->on_stdout_ref);
  sl_unref(L, &p->on_stderr_ref);
  sl_unref(L, &p->on_exit_ref);
  sl_unref(L, &p->self_ref);
  close_one((uv_handle_t *)&p->process);
  if (p->has_in) close_one((uv_handle_t *)&p->in);
  close_one((uv_handle_t *)&p->out);
  close_one((uv_handle_t *)&p->err);
}

static void maybe_report_exit(sl_proc *p) {
  if (!p->exited || !p->out_eof || !p->err_eof || p->exit_reported) return;
  p->exit_reported = 1;
  lua_State *L = p->L;
  int ref = p->on_exit_ref;
  p->on_exit_ref = LUA_NOREF;
  int64_t status = p->exit_status;
  int sig = p->term_signal;
  proc_release(p); /* handles close after this callback returns */
  if (ref == LUA_NOREF) return;
  sl_push_ref(L, ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  lua_pushinteger(L, (lua_Integer)status);
  lua_pushinteger(L, sig);
  sl_call(L, 2, 0);
}

static void on_exit_cb(uv_process_t *proc, int64_t status, int sig) {
  sl_proc *p = proc->data;
  p->exited = 1;
  p->exit_status = status;
  p->term_signal = sig;
  maybe_report_exit(p);
}

/* Output is copied into a Lua string before the next read, so one buffer serves every
 * pipe (the loop thread is the only reader). */
static char read_buffer[65536];

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = read_buffer;
  buf->len = sizeof read_buffer;
}

static void deliver(sl_proc *p, int ref, const char *data, size_t len) {
  if (ref == LUA_NOREF) return;
  lua_State *L = p->L;
  sl_push_ref(L, ref);
  if (data)
    lua_pushlstring(L, data, len);
  else
    lua_pushnil(L);
  sl_call(L, 1, 0);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  sl_proc *p = s->data;
  int is_out = s == (uv_stream_t *)&p->out;
  int ref = is_out ? p->on_stdout_ref : p->on_stderr_ref;
  if (nread > 0) {
    deliver(p, ref, buf->base, (size_t)nread);
  } else if (nread < 0) {
    uv_read_stop(s);
    if (is_out)
      p->out_eof = 1;
    else
      p->err_eof = 1;
    deliver(p, ref, NULL, 0);
    /* p may have been released by the callback, but it is freed only in close callbacks. */
    maybe_report_exit(p);
  }
  (void)buf;
}

static proc_ud *check_proc(lua_State *L) {
  proc_ud *ud = luaL_checkudata(L, 1, PROC_MT);
  sl_check_open(L, ud->p, "process");
  return ud;
}

static void on_write(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  lua_State *L = w->p->L;
  int ref = w->callback_ref;
  free(w);
  if (ref == LUA_NOREF) return;
  sl_push_ref(L, ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  int n = 1;
  if (status == 0)
    lua_pushboolean(L, 1);
  else
    n = sl_push_uv_error(L, status, "write to process stdin");
  sl_call(L, n, 0);
}

/* proc:write(data[, fn]): queues data for the child's stdin; fn(true) or fn(nil, msg, code)
 * when written. Returns true, or nil, msg, code when stdin is not open. */
static int proc_write(lua_State *L) {
  sl_proc *p = check_proc(L)->p;
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TFUNCTION);
  if (!p->has_in || p->in_closing || uv_is_closing((uv_handle_t *)&p->in))
    return sl_push_fail(L, "EPIPE", "process stdin is closed");
  write_req *w = malloc(sizeof *w + len);
  if (!w) return luaL_error(L, "out of memory");
  memcpy(w->data, data, len);
  w->p = p;
  w->callback_ref = lua_isnoneornil(L, 3) ? LUA_NOREF : sl_ref(L, 3);
  uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
  int rc = uv_write(&w->req, (uv_stream_t *)&p->in, &buf, 1, on_write);
  if (rc != 0) {
    sl_unref(L, &w->callback_ref);
    free(w);
    return sl_push_uv_error(L, rc, "write to process stdin");
  }
  lua_pushboolean(L, 1);
  return 1;
}

static void on_stdin_shutdown(uv_shutdown_t *req, int status) {
  (void)status; /* a child that stopped reading early is not an error here */
  close_one((uv_handle_t *)req->handle);
  free(req);
}

/* proc:close_stdin(): the child sees end of file after the queued writes are written
 * (closing the pipe at once would drop them). Idempotent. */
static int proc_close_stdin(lua_State *L) {
  sl_proc *p = check_proc(L)->p;
  if (!p->has_in || p->in_closing || uv_is_closing((uv_handle_t *)&p->in)) return 0;
  p->in_closing = 1;
  uv_shutdown_t *req = malloc(sizeof *req);
  if (!req || uv_shutdown(req, (uv_stream_t *)&p->in, on_stdin_shutdown) != 0) {
    free(req);
    close_one((uv_handle_t *)&p->in);
  }
  return 0;
}

static int signal_number(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return SIGTERM;
  if (lua_isinteger(L, idx)) return (int)lua_tointeger(L, idx);
  static const char *const names[] = {"SIGTERM", "SIGKILL", "SIGINT", "SIGHUP",
                                      "SIGSTOP", "SIGCONT", NULL};
  static const int nums[] = {SIGTERM, SIGKILL, SIGINT, SIGHUP, SIGSTOP, SIGCONT};
  return nums[luaL_checkoption(L, idx, NULL, names)];
}

/* proc:kill([signal]): signal is a number or "SIGTERM" (default), "SIGKILL", ... */
static int proc_kill(lua_State *L) {
  sl_proc *p = check_proc(L)->p;
  int sig = signal_number(L, 2);
  if (p->exited) {
    lua_pushboolean(L, 0);
    return 1;
  }
  int rc = uv_process_kill(&p->process, sig);
  if (rc != 0 && rc != UV_ESRCH) return sl_push_uv_error(L, rc, "kill");
  lua_pushboolean(L, rc == 0);
  return 1;
}

static int proc_pid(lua_State *L) {
  lua_pushinteger(L, check_proc(L)->p->process.pid);
  return 1;
}

/* __gc: a process whose handle is collected is killed, its callbacks dropped. */
static int proc_gc(lua_State *L) {
  proc_ud *ud = luaL_checkudata(L, 1, PROC_MT);
  sl_proc *p = ud->p;
  if (!p) return 0;
  if (!p->exited) uv_process_kill(&p->process, SIGKILL);
  proc_release(p);
  return 0;
}

/* Pushes a userdata holding a NULL-terminated array of the strings of the list at idx
 * (after first, when given). Numbers are converted; the converted strings are kept alive
 * in the userdata's user value, so the array stays valid while the userdata is on the
 * stack. */
static char **string_array(lua_State *L, int idx, const char *first, const char *what) {
  int n = idx ? (int)lua_rawlen(L, idx) : 0;
  char **arr = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 2), 1);
  lua_createtable(L, n, 0);
  lua_setiuservalue(L, -2, 1);
  lua_getiuservalue(L, -1, 1); /* anchor table */
  int k = 0;
  if (first) arr[k++] = (char *)first;
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    if (!lua_isstring(L, -1))
      luaL_error(L, "proc.spawn: %s[%d] must be a string, got %s", what, i, luaL_typename(L, -1));
    arr[k++] = (char *)lua_tostring(L, -1); /* converts a number in place */
    lua_rawseti(L, -2, i);                  /* the anchor keeps it alive */
  }
  arr[k] = NULL;
  lua_pop(L, 1);
  return arr;
}

/* Raises unless opts[field] is nil or a function. */
static void check_callback(lua_State *L, int opts, const char *field) {
  int t = lua_getfield(L, opts, field);
  if (t != LUA_TNIL && t != LUA_TFUNCTION)
    luaL_error(L, "proc.spawn: '%s' must be a function, got %s", field, luaL_typename(L, -1));
  lua_pop(L, 1);
}

static int opt_ref(lua_State *L, int opts, const char *field) {
  lua_getfield(L, opts, field);
  int ref = lua_isnil(L, -1) ? LUA_NOREF : sl_ref(L, -1);
  lua_pop(L, 1);
  return ref;
}

/* proc.spawn(opts) -> proc | nil, message, code */
static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_getfield(L, 1, "file"); /* 2 */
  if (lua_type(L, 2) != LUA_TSTRING)
    return luaL_error(L, "proc.spawn: 'file' must be a string, got %s", luaL_typename(L, 2));
  const char *file = lua_tostring(L, 2);
  lua_getfield(L, 1, "args"); /* 3 */
  if (!lua_isnil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  char **args = string_array(L, lua_isnil(L, 3) ? 0 : 3, file, "args"); /* 4 */
  lua_getfield(L, 1, "env");                                            /* 5 */
  char **env = NULL;
  if (!lua_isnil(L, 5)) {
    luaL_checktype(L, 5, LUA_TTABLE);
    env = string_array(L, 5, NULL, "env"); /* 6 */
  } else {
    lua_pushnil(L);
  }
  lua_getfield(L, 1, "cwd"); /* 7 */
  const char *cwd = luaL_optstring(L, 7, NULL);
  lua_getfield(L, 1, "stdin"); /* 8 */
  int want_in = lua_toboolean(L, 8);
  check_callback(L, 1, "on_stdout");
  check_callback(L, 1, "on_stderr");
  check_callback(L, 1, "on_exit");
  /* The handle exists before the process it owns (9): nothing allocated below can be left
   * behind by an error. */
  proc_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->p = NULL;
  luaL_setmetatable(L, PROC_MT);

  /* Nothing below raises before the process is started. */
  sl_proc *p = calloc(1, sizeof *p);
  if (!p) return luaL_error(L, "out of memory");
  p->L = sl_main_state();
  p->on_stdout_ref = opt_ref(L, 1, "on_stdout");
  p->on_stderr_ref = opt_ref(L, 1, "on_stderr");
  p->on_exit_ref = opt_ref(L, 1, "on_exit");
  p->self_ref = LUA_NOREF;
  uv_loop_t *loop = sl_loop(L);
  p->has_in = want_in;
  if (want_in) uv_pipe_init(loop, &p->in, 0);
  uv_pipe_init(loop, &p->out, 0);
  uv_pipe_init(loop, &p->err, 0);
  p->in.data = p->out.data = p->err.data = p->process.data = p;

  uv_stdio_container_t stdio[3];
  stdio[0].flags = want_in ? (UV_CREATE_PIPE | UV_READABLE_PIPE) : UV_IGNORE;
  stdio[0].data.stream = (uv_stream_t *)&p->in;
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t *)&p->out;
  stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[2].data.stream = (uv_stream_t *)&p->err;

  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.file = file;
  o.args = args;
  o.env = env;
  o.cwd = cwd;
  o.exit_cb = on_exit_cb;
  o.stdio = stdio;
  o.stdio_count = 3;
  int rc = uv_spawn(loop, &p->process, &o);
  p->open_handles = 3 + want_in;
  if (rc != 0) {
    /* uv_spawn initialised the process handle even on failure; close everything. */
    p->exited = 1;
    proc_release(p);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot run '%s': %s", file, uv_strerror(rc));
    lua_pushstring(L, uv_err_name(rc));
    return 3;
  }
  uv_read_start((uv_stream_t *)&p->out, alloc_cb, on_read);
  uv_read_start((uv_stream_t *)&p->err, alloc_cb, on_read);

  ud->p = p;
  p->ud = ud;
  lua_settop(L, 9);
  p->self_ref = sl_ref(L, 9); /* alive until the exit is reported */
  return 1;
}

int luaopen_sluice_proc(lua_State *L) {
  static const luaL_Reg methods[] = {{"write", proc_write},
                                     {"close_stdin", proc_close_stdin},
                                     {"kill", proc_kill},
                                     {"pid", proc_pid},
                                     {NULL, NULL}};
  luaL_newmetatable(L, PROC_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, proc_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"spawn", l_spawn}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
