/* redis.c: Redis connections on the engine's loop (Lua module sluice.core.redis).
 *
 * The only file that includes hiredis. It drives hiredis' asynchronous API from the one
 * libuv loop through hiredis' own libuv adapter (hiredis/adapters/libuv.h), and gives Lua
 * four primitives; the policy (reconnecting with backoff, MULTI/EXEC, streams, the broker)
 * is in lua/sluice/runtime/redis.lua and above.
 *
 *   c = redis.connect(host, port, cb)  cb(true) once connected, or cb(nil, msg, code) when
 *                                      resolving or connecting failed (then c is dead)
 *   c:command(argv[, cb[, shape]])     argv: a list of strings (binary-safe) or numbers;
 *                                      cb(reply) or cb(nil, msg, code) (no cb: the reply
 *                                      is dropped). shape "entries": the reply of an
 *                                      XREAD/XREADGROUP as a list of its entries (below).
 *                                      Returns true, or
 *                                      nil, msg, code when the connection cannot take it.
 *                                      Commands issued in the same loop turn are written
 *                                      together (pipelining); replies come in order.
 *   c:on_disconnect(fn)                fn(msg) once, when an established connection ends by
 *                                      itself (server gone, network error): the reconnect hook
 *   c:pending()                        commands sent and not yet answered
 *   c:close()  (also __gc, __close)    every pending cb gets nil, "closed", "ECLOSED"
 *
 * Replies: a status or bulk string is a Lua string, an integer an integer, a nil bulk or
 * nil array `false`, an array a table 1..n (elements the same way), an error inside an
 * array { err = "message" }; an error reply to the command itself is cb(nil, msg, "EREDIS").
 * With shape "entries" a stream read's reply is { {stream=, eid=, f = {field = value}}, ... }
 * (a timed-out read: {}; entries deleted since delivery left out): what the broker needs,
 * in two tables per entry instead of four and no Lua loop over the fields.
 *
 * Lifetime. The userdata points to a heap struct, freed only in the close callback of its
 * own timer handle, after hiredis has freed its context (hiredis frees the redisAsyncContext
 * itself: after a failed connect, after the disconnect callback, or in redisAsyncFree). Lua
 * is called from inside hiredis callbacks (replies, connect, disconnect); a close() made from
 * inside one of them is finished by the poll callback right after hiredis returns, so hiredis
 * never frees a context while it is still using it. Host names are resolved with uv_getaddrinfo (libuv's threads), never on the
 * loop.
 */
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

#define CONN_MT "sluice.redis"
/* Commands with up to this many arguments are passed to hiredis from the C stack. */
#define SMALL_ARGC 32

typedef struct rconn rconn;

typedef struct conn_ud {
  rconn *c; /* NULL once closed */
} conn_ud;

enum { ST_RESOLVING, ST_CONNECTING, ST_CONNECTED, ST_GONE };

struct rconn {
  uv_timer_t timer; /* its close callback frees the struct */
  uv_getaddrinfo_t gai;
  redisAsyncContext *ac; /* NULL when hiredis has freed it (or before it exists) */
  int state;
  int resolving;  /* a getaddrinfo request is in flight */
  int closing;    /* close() was called */
  int in_hiredis; /* depth of hiredis callbacks on the stack */
  int free_later; /* close() from inside a hiredis callback: poll_cb frees the context */
  int timer_closed;
  int port;
  int pending;
  int connect_ref, disc_ref;
  conn_ud *ud;
};

/* How a reply is given to Lua: as it is, or (RS_ENTRIES) an XREAD/XREADGROUP reply as one
 * flat list of its entries. */
enum { RS_PLAIN, RS_ENTRIES };

typedef struct cmd_cb {
  rconn *c;
  int ref;
  int shape;
} cmd_cb;

static void timer_closed(uv_handle_t *h) { free(h->data); }

/* The last step of a connection's life: its timer closes and frees the struct, once
 * hiredis no longer has a context and no getaddrinfo request refers to it. */
static void maybe_finish(rconn *c) {
  if (!c->closing || c->ac || c->resolving || c->timer_closed) return;
  c->timer_closed = 1;
  uv_close((uv_handle_t *)&c->timer, timer_closed);
}

static void push_reply(lua_State *L, redisReply *r, int depth) {
  luaL_checkstack(L, 4, "redis reply nested too deeply");
  switch (r->type) {
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
    lua_pushlstring(L, r->str, r->len);
    break;
  case REDIS_REPLY_INTEGER:
    lua_pushinteger(L, (lua_Integer)r->integer);
    break;
  case REDIS_REPLY_ARRAY:
    lua_createtable(L, (int)r->elements, 0);
    for (size_t i = 0; i < r->elements; i++) {
      push_reply(L, r->element[i], depth + 1);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  case REDIS_REPLY_ERROR:
    lua_createtable(L, 0, 1);
    lua_pushlstring(L, r->str, r->len);
    lua_setfield(L, -2, "err");
    break;
  default: /* REDIS_REPLY_NIL */
    lua_pushboolean(L, 0);
    break;
  }
}

/* An XREAD/XREADGROUP reply ([[stream, [[id, [field, value, ...]], ...]], ...], or nil when
 * a blocking read timed out) as { {stream=, eid=, f = {field = value, ...}}, ... }: one table
 * per entry and one for its fields, where the reply as it is takes four. Entries deleted
 * since they were delivered (nil fields) are left out. Returns 0, or -1 (nothing pushed)
 * when the reply is not that shape. */
static int push_entries(lua_State *L, redisReply *r) {
  if (r->type == REDIS_REPLY_NIL) {
    lua_newtable(L);
    return 0;
  }
  if (r->type != REDIS_REPLY_ARRAY) return -1;
  size_t total = 0;
  for (size_t i = 0; i < r->elements; i++) {
    redisReply *st = r->element[i];
    if (st->type != REDIS_REPLY_ARRAY || st->elements != 2 || st->element[0]->type != REDIS_REPLY_STRING ||
        (st->element[1]->type != REDIS_REPLY_ARRAY && st->element[1]->type != REDIS_REPLY_NIL))
      return -1;
    total += st->element[1]->elements;
  }
  luaL_checkstack(L, 8, "redis reply");
  lua_createtable(L, total > INT_MAX ? 0 : (int)total, 0);
  lua_Integer n = 0;
  for (size_t i = 0; i < r->elements; i++) {
    redisReply *name = r->element[i]->element[0], *list = r->element[i]->element[1];
    lua_pushlstring(L, name->str, name->len);
    for (size_t j = 0; j < list->elements; j++) {
      redisReply *e = list->element[j];
      if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[1]->type != REDIS_REPLY_ARRAY)
        continue; /* deleted since (nil fields) */
      redisReply *id = e->element[0], *fv = e->element[1];
      lua_createtable(L, 0, 3);
      lua_pushvalue(L, -2);
      lua_setfield(L, -2, "stream");
      push_reply(L, id, 1);
      lua_setfield(L, -2, "eid");
      lua_createtable(L, 0, (int)(fv->elements / 2));
      for (size_t k = 0; k + 1 < fv->elements; k += 2) {
        push_reply(L, fv->element[k], 1);
        push_reply(L, fv->element[k + 1], 1);
        lua_rawset(L, -3);
      }
      lua_setfield(L, -2, "f");
      lua_rawseti(L, -3, ++n);
    }
    lua_pop(L, 1);
  }
  return 0;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  cmd_cb *cb = privdata;
  rconn *c = cb->c;
  int ref = cb->ref, shape = cb->shape;
  free(cb);
  c->pending--;
  lua_State *L = sl_main_state();
  if (!L || ref == LUA_NOREF) return; /* no callback, or the state is closing */
  sl_push_ref(L, ref);
  sl_unref(L, &ref);
  redisReply *r = reply;
  int n;
  if (c->closing) { /* close() was called: what was pending ends here, replied or not */
    n = sl_push_fail(L, "ECLOSED", "redis: connection closed");
  } else if (!r) {
    n = sl_push_fail(L, "ECONNRESET", "redis: connection lost (%s)",
                     ac->err ? ac->errstr : "closed by the server");
  } else if (r->type == REDIS_REPLY_ERROR) {
    n = sl_push_fail(L, "EREDIS", "%s", r->str);
  } else if (shape == RS_ENTRIES) {
    n = 1;
    if (push_entries(L, r)) n = sl_push_fail(L, "EREDIS", "redis: the reply is not stream entries");
  } else {
    push_reply(L, r, 0);
    n = 1;
  }
  c->in_hiredis++;
  sl_call(L, n, 0);
  c->in_hiredis--;
}

/* Calls the Lua function of *ref once (dropping the reference) with true, or nil, msg, code
 * (code NULL: just msg). */
static void call_ref(rconn *c, int *ref, int ok, const char *code, const char *msg) {
  lua_State *L = sl_main_state();
  if (*ref == LUA_NOREF) return;
  if (!L) {
    *ref = LUA_NOREF;
    return;
  }
  sl_push_ref(L, *ref);
  sl_unref(L, ref);
  int n = 1;
  if (ok)
    lua_pushboolean(L, 1);
  else if (code)
    n = sl_push_fail(L, code, "%s", msg);
  else
    lua_pushstring(L, msg);
  c->in_hiredis++;
  sl_call(L, n, 0);
  c->in_hiredis--;
}

static void on_connect(const redisAsyncContext *ac, int status) {
  rconn *c = ac->data;
  if (status != REDIS_OK) {
    /* hiredis frees the context when this returns */
    char msg[256];
    snprintf(msg, sizeof msg, "redis: cannot connect to port %d: %s", c->port,
             ac->errstr[0] ? ac->errstr : "connection failed");
    c->ac = NULL;
    c->state = ST_GONE;
    sl_unref(sl_main_state(), &c->disc_ref);
    call_ref(c, &c->connect_ref, 0, "ECONNREFUSED", msg);
    maybe_finish(c);
    return;
  }
  c->state = ST_CONNECTED;
  call_ref(c, &c->connect_ref, 1, NULL, NULL);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  rconn *c = ac->data;
  /* hiredis frees the context when this returns */
  char msg[256];
  snprintf(msg, sizeof msg, "redis: connection lost (%s)",
           status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "error"));
  c->ac = NULL;
  c->state = ST_GONE;
  if (c->closing) {
    sl_unref(sl_main_state(), &c->disc_ref);
  } else {
    call_ref(c, &c->disc_ref, 0, NULL, msg);
  }
  maybe_finish(c);
}

/* hiredis 0.14's libuv adapter ignores a poll callback with an error status (libuv reports
 * a failed connect as UV_EBADF and stops the poll), so a refused connection would never
 * be reported. The adapter still allocates and closes its poll handle; these four hooks
 * replace its own with ones whose callback hands an error to hiredis as the events it
 * waited for, so hiredis reads the socket's error and reports it. */
static void free_context(rconn *c);

static void poll_cb(uv_poll_t *handle, int status, int events) {
  redisLibuvEvents *p = handle->data;
  int ev = status ? p->events : events;
  rconn *c = p->context ? p->context->data : NULL; /* freed only by its timer's close callback */
  if (p->context && (ev & UV_READABLE)) redisAsyncHandleRead(p->context);
  if (p->context && (ev & UV_WRITABLE)) redisAsyncHandleWrite(p->context);
  if (c && c->free_later && c->in_hiredis == 0) free_context(c); /* a close from a callback */
}

static void poll_set(void *d, int flag, int on) {
  redisLibuvEvents *p = d;
  if (on)
    p->events |= flag;
  else
    p->events &= ~flag;
  if (p->events)
    uv_poll_start(&p->handle, p->events, poll_cb);
  else
    uv_poll_stop(&p->handle);
}

static void ev_add_read(void *d) { poll_set(d, UV_READABLE, 1); }
static void ev_del_read(void *d) { poll_set(d, UV_READABLE, 0); }
static void ev_add_write(void *d) { poll_set(d, UV_WRITABLE, 1); }
static void ev_del_write(void *d) { poll_set(d, UV_WRITABLE, 0); }

static void start_connect(rconn *c, const char *ip) {
  lua_State *L = sl_main_state();
  redisAsyncContext *ac = redisAsyncConnect(ip, c->port);
  char msg[256];
  if (!ac) {
    snprintf(msg, sizeof msg, "redis: out of memory");
  } else if (ac->err) {
    snprintf(msg, sizeof msg, "redis: cannot connect to %s:%d: %s", ip, c->port, ac->errstr);
    redisAsyncFree(ac);
  } else if (redisLibuvAttach(ac, sl_loop(L)) != REDIS_OK) {
    snprintf(msg, sizeof msg, "redis: cannot watch the connection's socket");
    redisAsyncFree(ac);
  } else {
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->data = c;
    c->ac = ac;
    c->state = ST_CONNECTING;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return;
  }
  c->state = ST_GONE;
  sl_unref(L, &c->disc_ref);
  call_ref(c, &c->connect_ref, 0, "ECONNREFUSED", msg);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  rconn *c = req->data;
  c->resolving = 0;
  if (c->closing) {
    if (res) uv_freeaddrinfo(res);
    maybe_finish(c);
    return;
  }
  char ip[64] = "";
  if (status == 0 && res) {
    if (res->ai_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)res->ai_addr, ip, sizeof ip);
    else
      uv_ip4_name((struct sockaddr_in *)res->ai_addr, ip, sizeof ip);
  }
  if (res) uv_freeaddrinfo(res);
  if (status != 0 || !ip[0]) {
    char msg[256];
    snprintf(msg, sizeof msg, "redis: cannot resolve the host: %s",
             status ? uv_strerror(status) : "no address");
    c->state = ST_GONE;
    sl_unref(sl_main_state(), &c->disc_ref);
    call_ref(c, &c->connect_ref, 0, "EHOST", msg);
    return;
  }
  start_connect(c, ip);
}

static void detach(rconn *c) {
  if (c->ud) c->ud->c = NULL;
  c->ud = NULL;
}

/* Frees hiredis' context: its pending callbacks get ECLOSED, then on_disconnect runs (when
 * it was connected) and clears c->ac. Never called from inside a hiredis callback. */
static void free_context(rconn *c) {
  c->free_later = 0;
  if (c->ac) redisAsyncFree(c->ac);
  c->ac = NULL;
  maybe_finish(c);
}

/* close(), __gc, __close. Inside a hiredis callback of this connection (a reply, the connect
 * callback) hiredis must not free its context: poll_cb frees it as soon as hiredis returns,
 * in the same loop turn (so also when the loop is being stopped). */
static void conn_close(rconn *c) {
  if (c->closing) return;
  c->closing = 1;
  lua_State *L = sl_main_state();
  if (L) {
    sl_unref(L, &c->connect_ref);
    sl_unref(L, &c->disc_ref);
  } else {
    c->connect_ref = c->disc_ref = LUA_NOREF;
  }
  detach(c);
  if (c->resolving) uv_cancel((uv_req_t *)&c->gai); /* on_resolved runs, with ECANCELED */
  if (c->ac && c->in_hiredis > 0) {
    c->free_later = 1;
    return;
  }
  free_context(c);
}

/* The open connection of the userdata at idx, or NULL once closed (or closing). */
static rconn *open_conn(lua_State *L, int idx) {
  conn_ud *ud = luaL_checkudata(L, idx, CONN_MT);
  return ud->c && !ud->c->closing ? ud->c : NULL;
}

static rconn *check_conn(lua_State *L) {
  rconn *c = open_conn(L, 1);
  sl_check_open(L, c, "redis connection");
  return c;
}

/* redis.connect(host, port, cb) -> connection */
static int l_connect(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  luaL_argcheck(L, port > 0 && port < 65536, 2, "port out of range");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  rconn *c = calloc(1, sizeof *c);
  if (!c) return luaL_error(L, "out of memory");
  c->port = (int)port;
  c->connect_ref = c->disc_ref = LUA_NOREF;
  uv_loop_t *loop = sl_loop(L);
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  conn_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->c = c;
  c->ud = ud;
  luaL_setmetatable(L, CONN_MT);
  c->connect_ref = sl_ref(L, 3);
  c->gai.data = c;
  c->state = ST_RESOLVING;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_INET; /* hiredis 0.14 connects by address text; IPv4 first */
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(loop, &c->gai, on_resolved, host, NULL, &hints);
  if (rc != 0) {
    conn_close(c);
    lua_pop(L, 1);
    return sl_push_uv_error(L, rc, "redis: resolve");
  }
  c->resolving = 1;
  return 1;
}

/* c:command(argv[, cb[, shape]]) -> true | nil, msg, code */
static int conn_command(lua_State *L) {
  static const char *const shapes[] = {"plain", "entries", NULL};
  rconn *c = check_conn(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  int has_cb = !lua_isnoneornil(L, 3);
  if (has_cb) luaL_checktype(L, 3, LUA_TFUNCTION);
  int shape = luaL_checkoption(L, 4, "plain", shapes);
  lua_settop(L, 3);
  int argc = (int)lua_rawlen(L, 2);
  luaL_argcheck(L, argc > 0, 2, "empty command");
  if (c->state != ST_CONNECTED || !c->ac)
    return sl_push_fail(L, "ENOTCONN", "redis: not connected");
  const char *small_argv[SMALL_ARGC];
  size_t small_lens[SMALL_ARGC];
  const char **argv = small_argv;
  size_t *lens = small_lens;
  if (argc > SMALL_ARGC) {
    argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)argc, 0);
    lens = lua_newuserdatauv(L, sizeof(size_t) * (size_t)argc, 0);
  }
  luaL_checkstack(L, argc + 4, "redis command: too many arguments");
  for (int i = 0; i < argc; i++) {
    int ty = lua_rawgeti(L, 2, i + 1); /* stays on the stack until the command is copied */
    if (ty != LUA_TSTRING && ty != LUA_TNUMBER)
      return luaL_error(L, "redis command: argument %d must be a string or a number, got %s",
                        i + 1, luaL_typename(L, -1));
    argv[i] = lua_tolstring(L, -1, &lens[i]); /* a number is converted on the stack */
  }
  cmd_cb *cb = malloc(sizeof *cb);
  if (!cb) return luaL_error(L, "out of memory");
  cb->c = c;
  cb->ref = LUA_NOREF;
  cb->shape = shape;
  if (redisAsyncCommandArgv(c->ac, on_reply, cb, argc, argv, lens) != REDIS_OK) {
    free(cb);
    return sl_push_fail(L, "ENOTCONN", "redis: the connection is closing");
  }
  if (has_cb) cb->ref = sl_ref(L, 3); /* hiredis never calls back before this returns */
  c->pending++;
  lua_pushboolean(L, 1);
  return 1;
}

static int conn_pending(lua_State *L) {
  lua_pushinteger(L, check_conn(L)->pending);
  return 1;
}

static int conn_on_disconnect(lua_State *L) {
  rconn *c = check_conn(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  sl_unref(L, &c->disc_ref);
  if (c->state == ST_GONE) return 0;
  c->disc_ref = sl_ref(L, 2);
  return 0;
}

static int conn_connected(lua_State *L) {
  rconn *c = open_conn(L, 1);
  lua_pushboolean(L, c && c->state == ST_CONNECTED);
  return 1;
}

static int conn_gc(lua_State *L) {
  conn_ud *ud = luaL_checkudata(L, 1, CONN_MT);
  if (ud->c) conn_close(ud->c);
  return 0;
}

static int conn_tostring(lua_State *L) {
  rconn *c = open_conn(L, 1);
  static const char *names[] = {"resolving", "connecting", "connected", "gone"};
  if (c)
    lua_pushfstring(L, "sluice.redis (port %d, %s)", c->port, names[c->state]);
  else
    lua_pushliteral(L, "sluice.redis (closed)");
  return 1;
}

int luaopen_sluice_redis(lua_State *L) {
  static const luaL_Reg methods[] = {{"command", conn_command},
                                     {"pending", conn_pending},
                                     {"on_disconnect", conn_on_disconnect},
                                     {"connected", conn_connected},
                                     {"close", conn_gc},
                                     {NULL, NULL}};
  if (luaL_newmetatable(L, CONN_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, conn_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, conn_gc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, conn_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"connect", l_connect}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
