/* httpd.c: a small HTTP/1.1 server on the engine's loop, as the Lua module sluice.core.httpd.
 *
 * It parses requests, enforces size limits and timeouts, and writes responses; what to answer
 * is decided in Lua (lua/sluice/app/dashboard.lua). A request is handed to on_request(req, info)
 * with info = {method=, target=, path=, query=, version=, headers={lowercase name = value},
 * body=}; the handler answers at once or later (from a task) with req:respond(...), or opens
 * a stream (Server-Sent Events) with req:stream(...), req:write(...), req:finish().
 *
 *   srv = httpd.listen{host="127.0.0.1", port=8750, on_request=fn,
 *                      max_header=16384, max_body=65536, idle_timeout=30}
 *   srv:address() -> host, port        srv:close()
 *   httpd.read_file(root, relpath, cb) -- pool job: cb(bytes) or cb(nil, message, code)
 *
 * Keep-alive and pipelined requests are served in order, one at a time per connection.
 * Requests with a header block over max_header get 431, bodies over max_body 413, chunked
 * request bodies 501; each of those closes the connection. A connection idle for
 * idle_timeout seconds between requests is closed. A stream whose client reads too slowly
 * (more than 8 MiB waiting) is closed; an SSE client reconnects with Last-Event-ID.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "sluice.h"

#define SERVER_MT "sluice.httpd.server"
#define REQ_MT "sluice.httpd.request"
#define MAX_HEADERS 100
#define MAX_STREAM_BACKLOG (8u << 20)
#define MAX_FILE (64u << 20)

typedef struct server server;
typedef struct conn conn;

typedef struct server_ud {
  server *s; /* NULL once closed */
} server_ud;

struct server {
  uv_tcp_t tcp;
  int on_request_ref;
  int self_ref;
  size_t max_header, max_body;
  uint64_t idle_ms;
  conn *conns;
  int nconns;
  int listener_closed;
  server_ud *ud;
};

typedef struct req_ud {
  conn *c; /* NULL once the response is complete or the connection is gone */
  int on_close_ref;
} req_ud;

enum { ST_READ, ST_HANDLE, ST_STREAM, ST_CLOSING };

struct conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  int open_handles; /* the struct is freed when both handles have closed */
  server *srv;
  char *buf;
  size_t len, cap;
  int state;
  int keep_alive;
  int head_only;
  int dispatching;
  int reading;
  int eof; /* the client has shut down its side: answer what was asked, then close */
  int closing;
  req_ud *req;
  int req_ref;
  size_t queued; /* bytes written but not yet confirmed */
  conn *prev, *next;
};

static void conn_close(conn *c);
static void conn_process(conn *c);

/* ---- writing ------------------------------------------------------------------------------- */

typedef struct write_req {
  uv_write_t w;
  conn *c;
  size_t len;
  char data[];
} write_req;

static void on_write(uv_write_t *w, int status) {
  write_req *wr = (write_req *)w;
  conn *c = wr->c;
  c->queued -= wr->len;
  free(wr);
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->state == ST_CLOSING && c->queued == 0) conn_close(c);
}

/* Queues len bytes on the connection (copied). Returns 0 or a libuv error. */
static int conn_write(conn *c, const char *data, size_t len) {
  if (c->closing) return UV_EPIPE;
  write_req *wr = malloc(sizeof *wr + len);
  if (!wr) return UV_ENOMEM;
  wr->c = c;
  wr->len = len;
  memcpy(wr->data, data, len);
  uv_buf_t b = uv_buf_init(wr->data, (unsigned)len);
  int rc = uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (rc != 0) {
    free(wr);
    return rc;
  }
  c->queued += len;
  return 0;
}

static const char *reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

/* A response head is built in an sl_buf (buf.h). */
static void sb_fmt(sl_buf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) sl_buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A C-generated error response; the connection closes after it. */
static void conn_fail(conn *c, int status, const char *msg) {
  sl_buf b = {0};
  sb_fmt(&b,
         "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
         "Connection: close\r\n\r\n%s",
         status, reason_phrase(status), strlen(msg) + 1, msg);
  sl_buf_add(&b, "\n", 1);
  c->state = ST_CLOSING;
  c->keep_alive = 0;
  if (b.oom || conn_write(c, b.p, b.len) != 0 || c->queued == 0) conn_close(c);
  free(b.p);
}

/* ---- connection lifetime ----------------------------------------------------------------------
 */

static void server_maybe_free(server *s) {
  if (s->listener_closed && s->nconns == 0) free(s);
}

static void on_conn_handle_closed(uv_handle_t *h) {
  conn *c = h->data;
  if (--c->open_handles > 0) return;
  server *s = c->srv;
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->nconns--;
  free(c->buf);
  free(c);
  server_maybe_free(s);
}

/* Ends the request in progress (if any): its handle becomes closed and its on_close
 * callback runs. */
static void conn_end_request(lua_State *L, conn *c, int gone) {
  req_ud *r = c->req;
  if (!r) return;
  c->req = NULL;
  r->c = NULL;
  int cb = r->on_close_ref;
  r->on_close_ref = LUA_NOREF;
  sl_unref(L, &c->req_ref);
  if (cb != LUA_NOREF) {
    if (gone) {
      sl_push_ref(L, cb);
      sl_unref(L, &cb);
      sl_call(L, 0, 0);
    } else {
      sl_unref(L, &cb);
    }
  }
}

/* Closes the connection. L is the state to release references on (NULL: the main state);
 * notify says whether the request's on_close callback runs (not while Lua is closing). */
static void conn_close_with(lua_State *L, conn *c, int notify) {
  if (c->closing) return;
  c->closing = 1;
  c->state = ST_CLOSING;
  if (!L) L = sl_main_state();
  if (L) conn_end_request(L, c, notify);
  uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void conn_close(conn *c) { conn_close_with(NULL, c, 1); }

static void on_timeout(uv_timer_t *t) {
  conn *c = t->data;
  if (c->state == ST_READ) conn_close(c);
}

static void on_process_later(uv_timer_t *t) {
  conn *c = t->data;
  if (c->state == ST_READ) conn_process(c);
}

static void arm_idle_timer(conn *c) {
  if (c->closing) return;
  uv_timer_start(&c->timer, on_timeout, c->srv->idle_ms, 0);
}

/* ---- reading and parsing ------------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out) {
  conn *c = h->data;
  (void)suggested;
  size_t want = 16384;
  if (c->cap - c->len < want) {
    size_t cap = c->cap ? c->cap : 16384;
    while (cap - c->len < want) cap *= 2;
    char *p = realloc(c->buf, cap);
    if (!p) {
      *out = uv_buf_init(NULL, 0);
      return;
    }
    c->buf = p;
    c->cap = cap;
  }
  *out = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  conn *c = st->data;
  (void)b;
  if (n == UV_EOF && c->state != ST_STREAM && !c->closing) {
    /* A half-closed client still gets the answers to the requests it sent. A streaming
     * client that hangs up is gone. */
    c->eof = 1;
    uv_read_stop(st);
    c->reading = 0;
    if (c->state == ST_READ && !c->dispatching) conn_process(c);
    return;
  }
  if (n < 0) {
    conn_close(c);
    return;
  }
  c->len += (size_t)n;
  if (c->state == ST_READ && !c->dispatching) {
    conn_process(c);
  } else if (c->len > c->srv->max_header + c->srv->max_body) {
    /* The client sends more while its request is handled: stop reading until it is done. */
    uv_read_stop(st);
    c->reading = 0;
  }
}

static const char *find_crlfcrlf(const char *p, size_t n) {
  for (size_t i = 0; i + 3 < n; i++)
    if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n') return p + i;
  return NULL;
}

static int valid_token(const char *p, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)p[i];
    if (ch <= 32 || ch >= 127 || ch == ':') return 0;
  }
  return 1;
}

/* Parses one request at the start of c->buf and hands it to Lua. Returns 1 when a request
 * was dispatched, 0 when more bytes are needed, -1 when the connection failed. */
static int conn_parse_one(conn *c) {
  server *s = c->srv;
  const char *end = find_crlfcrlf(c->buf, c->len);
  if (!end) {
    if (c->len > s->max_header) {
      conn_fail(c, 431, "request header too large");
      return -1;
    }
    return 0;
  }
  size_t head_len = (size_t)(end - c->buf) + 4;
  if (head_len > s->max_header) {
    conn_fail(c, 431, "request header too large");
    return -1;
  }
  lua_State *L = sl_main_state();
  int top = lua_gettop(L);
  /* request line */
  const char *p = c->buf, *line_end = memchr(p, '\r', head_len);
  const char *sp1 = memchr(p, ' ', (size_t)(line_end - p));
  const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
  if (!sp1 || !sp2 || !valid_token(p, (size_t)(sp1 - p)) || sp2 == sp1 + 1 ||
      (size_t)(line_end - sp2 - 1) != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
      (sp2[8] != '0' && sp2[8] != '1')) {
    conn_fail(c, 400, "malformed request line");
    return -1;
  }
  int http11 = sp2[8] == '1';
  lua_createtable(L, 0, 8);
  lua_pushlstring(L, p, (size_t)(sp1 - p));
  lua_setfield(L, -2, "method");
  const char *target = sp1 + 1;
  size_t target_len = (size_t)(sp2 - target);
  lua_pushlstring(L, target, target_len);
  lua_setfield(L, -2, "target");
  const char *q = memchr(target, '?', target_len);
  lua_pushlstring(L, target, q ? (size_t)(q - target) : target_len);
  lua_setfield(L, -2, "path");
  if (q) {
    lua_pushlstring(L, q + 1, target_len - (size_t)(q - target) - 1);
    lua_setfield(L, -2, "query");
  }
  lua_pushstring(L, http11 ? "HTTP/1.1" : "HTTP/1.0");
  lua_setfield(L, -2, "version");
  c->head_only = (size_t)(sp1 - p) == 4 && memcmp(p, "HEAD", 4) == 0;
  /* headers */
  lua_createtable(L, 0, 8);
  int keep_alive = http11, nheaders = 0, chunked = 0;
  long long content_length = 0;
  const char *h = line_end + 2;
  while (h < end + 2) {
    const char *eol = memchr(h, '\r', (size_t)(end + 2 - h));
    if (!eol || eol == h) break;
    const char *colon = memchr(h, ':', (size_t)(eol - h));
    if (!colon || !valid_token(h, (size_t)(colon - h)) || ++nheaders > MAX_HEADERS) {
      lua_settop(L, top);
      conn_fail(c, nheaders > MAX_HEADERS ? 431 : 400, "malformed header");
      return -1;
    }
    char name[256];
    size_t nlen = (size_t)(colon - h);
    if (nlen >= sizeof name) nlen = sizeof name - 1;
    for (size_t i = 0; i < nlen; i++)
      name[i] = (char)((h[i] >= 'A' && h[i] <= 'Z') ? h[i] + 32 : h[i]);
    name[nlen] = '\0';
    const char *v = colon + 1, *ve = eol;
    while (v < ve && (*v == ' ' || *v == '\t')) v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    size_t vlen = (size_t)(ve - v);
    if (strcmp(name, "content-length") == 0) {
      char num[32];
      if (vlen == 0 || vlen >= sizeof num || strspn(v, "0123456789") < vlen) {
        lua_settop(L, top);
        conn_fail(c, 400, "bad content-length");
        return -1;
      }
      memcpy(num, v, vlen);
      num[vlen] = '\0';
      content_length = strtoll(num, NULL, 10);
    } else if (strcmp(name, "transfer-encoding") == 0) {
      chunked = 1;
    } else if (strcmp(name, "connection") == 0) {
      if (vlen >= 5 && strncasecmp(v, "close", 5) == 0) keep_alive = 0;
      if (vlen >= 10 && strncasecmp(v, "keep-alive", 10) == 0) keep_alive = 1;
    }
    lua_getfield(L, -1, name);
    if (lua_isstring(L, -1)) { /* repeated header: join with ", " */
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, v, vlen);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, v, vlen);
    }
    lua_setfield(L, -2, name);
    h = eol + 2;
  }
  lua_setfield(L, -2, "headers");
  if (chunked) {
    lua_settop(L, top);
    conn_fail(c, 501, "chunked request bodies are not supported");
    return -1;
  }
  if (content_length < 0 || (unsigned long long)content_length > s->max_body) {
    lua_settop(L, top);
    conn_fail(c, 413, "request body too large");
    return -1;
  }
  if (c->len < head_len + (size_t)content_length) { /* wait for the whole body */
    lua_settop(L, top);
    return 0;
  }
  if (content_length > 0) {
    lua_pushlstring(L, c->buf + head_len, (size_t)content_length);
    lua_setfield(L, -2, "body");
  }
  size_t used = head_len + (size_t)content_length;
  memmove(c->buf, c->buf + used, c->len - used);
  c->len -= used;
  c->keep_alive = keep_alive;
  c->state = ST_HANDLE;
  uv_timer_stop(&c->timer);

  /* the request handle */
  req_ud *r = lua_newuserdatauv(L, sizeof *r, 0);
  r->c = c;
  r->on_close_ref = LUA_NOREF;
  luaL_setmetatable(L, REQ_MT);
  c->req = r;
  c->req_ref = sl_ref(L, -1);
  /* on_request(req, info) */
  sl_push_ref(L, s->on_request_ref);
  lua_insert(L, -3);
  lua_insert(L, -2);
  int status = sl_call(L, 2, 0);
  lua_settop(L, top);
  if (status != LUA_OK && c->req == r && !c->closing) {
    conn_end_request(L, c, 0);
    conn_fail(c, 500, "internal error");
    return -1;
  }
  return 1;
}

/* Serves the requests waiting in the buffer, one at a time. */
static void conn_process(conn *c) {
  if (c->dispatching) return;
  c->dispatching = 1;
  while (!c->closing && c->state == ST_READ) {
    int r = conn_parse_one(c);
    if (r <= 0) break;
  }
  c->dispatching = 0;
  if (c->closing) return;
  if (c->state == ST_READ && c->eof) { /* nothing more will come */
    c->state = ST_CLOSING;
    if (c->queued == 0) conn_close(c);
    return;
  }
  if (c->state == ST_READ) {
    arm_idle_timer(c);
    if (!c->reading) {
      c->reading = 1;
      uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
  }
}

/* The response to the current request is complete: go on with the next one or close. */
static void conn_request_done(conn *c) {
  conn_end_request(sl_main_state(), c, 0);
  if (c->closing) return;
  if (!c->keep_alive) {
    c->state = ST_CLOSING;
    if (c->queued == 0) conn_close(c);
    return;
  }
  c->state = ST_READ;
  /* The next request is served from the loop, not from inside the Lua code answering this
   * one: a zero timeout runs conn_process on the next iteration. */
  uv_timer_start(&c->timer, on_process_later, 0, 0);
}

/* ---- accepting ------------------------------------------------------------------------------ */

static void on_connection(uv_stream_t *listener, int status) {
  server *s = listener->data;
  if (status < 0) return;
  conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->srv = s;
  c->req_ref = LUA_NOREF;
  uv_tcp_init(listener->loop, &c->tcp);
  uv_timer_init(listener->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->open_handles = 2;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  c->state = ST_READ;
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  arm_idle_timer(c);
}

/* ---- Lua: request handles -------------------------------------------------------------------- */

static req_ud *check_req(lua_State *L) { return luaL_checkudata(L, 1, REQ_MT); }

/* Appends "Name: value\r\n" for each string pair of the table at idx. Header names and
 * values must not contain CR or LF. */
static void add_headers(lua_State *L, int idx, sl_buf *b, int *has_ctype) {
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t kn, vn;
    const char *k = luaL_checklstring(L, -2, &kn);
    const char *v = luaL_tolstring(L, -1, &vn);
    if (strpbrk(k, "\r\n:") || memchr(v, '\r', vn) || memchr(v, '\n', vn))
      luaL_error(L, "bad header '%s' (CR, LF or ':' in a name, or CR/LF in a value)", k);
    if (strcasecmp(k, "content-type") == 0) *has_ctype = 1;
    sl_buf_add(b, k, kn);
    sl_buf_add(b, ": ", 2);
    sl_buf_add(b, v, vn);
    sl_buf_add(b, "\r\n", 2);
    lua_pop(L, 2);
  }
}

/* req:respond(status, headers, body): sends a complete response. Returns true, or nil and
 * "closed" when the client has gone. */
static int req_respond(lua_State *L) {
  req_ud *r = check_req(L);
  int status = (int)luaL_checkinteger(L, 2);
  size_t blen = 0;
  const char *body = luaL_optlstring(L, 4, "", &blen);
  luaL_argcheck(L, status >= 100 && status <= 999, 2, "HTTP status expected");
  conn *c = r->c;
  if (!c) return sl_push_fail(L, "EPIPE", "closed");
  if (c->state != ST_HANDLE) return luaL_error(L, "request already answered");
  sl_buf b = {0};
  sb_fmt(&b, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
  int has_ctype = 0;
  add_headers(L, 3, &b, &has_ctype);
  if (!has_ctype) sb_fmt(&b, "Content-Type: text/plain; charset=utf-8\r\n");
  sb_fmt(&b, "Content-Length: %zu\r\nConnection: %s\r\n\r\n", blen,
         c->keep_alive ? "keep-alive" : "close");
  if (!c->head_only) sl_buf_add(&b, body, blen);
  if (b.oom) {
    free(b.p);
    return luaL_error(L, "out of memory");
  }
  int rc = conn_write(c, b.p, b.len);
  free(b.p);
  if (rc != 0) {
    conn_close(c);
    return sl_push_uv_error(L, rc, "respond");
  }
  conn_request_done(c);
  lua_pushboolean(L, 1);
  return 1;
}

/* req:stream(status, headers): sends the head of a response whose body follows in
 * req:write() calls until req:finish(); the connection closes after it. */
static int req_stream(lua_State *L) {
  req_ud *r = check_req(L);
  int status = (int)luaL_checkinteger(L, 2);
  conn *c = r->c;
  if (!c) return sl_push_fail(L, "EPIPE", "closed");
  if (c->state != ST_HANDLE) return luaL_error(L, "request already answered");
  sl_buf b = {0};
  sb_fmt(&b, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
  int has_ctype = 0;
  add_headers(L, 3, &b, &has_ctype);
  sb_fmt(&b, "Connection: close\r\n\r\n");
  int rc = b.oom ? UV_ENOMEM : conn_write(c, b.p, b.len);
  free(b.p);
  if (rc != 0) {
    conn_close(c);
    return sl_push_uv_error(L, rc, "stream");
  }
  c->state = ST_STREAM;
  c->keep_alive = 0;
  lua_pushboolean(L, 1);
  return 1;
}

/* req:write(data) -> true | nil, message: appends to a stream. A client that has more than
 * 8 MiB unread is disconnected. */
static int req_write(lua_State *L) {
  req_ud *r = check_req(L);
  size_t n;
  const char *data = luaL_checklstring(L, 2, &n);
  conn *c = r->c;
  if (!c) return sl_push_fail(L, "EPIPE", "closed");
  if (c->state != ST_STREAM) return luaL_error(L, "req:write needs req:stream first");
  if (c->head_only) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (c->queued > MAX_STREAM_BACKLOG) {
    conn_close(c);
    return sl_push_fail(L, "EPIPE", "client too slow: disconnected");
  }
  int rc = conn_write(c, data, n);
  if (rc != 0) {
    conn_close(c);
    return sl_push_uv_error(L, rc, "write");
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* req:finish(): ends a stream (the connection closes once the data is written). */
static int req_finish(lua_State *L) {
  req_ud *r = check_req(L);
  conn *c = r->c;
  if (!c) return 0;
  if (c->state == ST_STREAM) conn_request_done(c);
  return 0;
}

/* req:on_close(fn): fn() runs if the client goes away before the response is complete. */
static int req_on_close(lua_State *L) {
  req_ud *r = check_req(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (!r->c) return 0;
  sl_unref(L, &r->on_close_ref);
  r->on_close_ref = sl_ref(L, 2);
  return 0;
}

static int req_closed(lua_State *L) {
  lua_pushboolean(L, check_req(L)->c == NULL);
  return 1;
}

static int req_peer(lua_State *L) {
  req_ud *r = check_req(L);
  if (!r->c) return 0;
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char ip[64] = "";
  if (uv_tcp_getpeername(&r->c->tcp, (struct sockaddr *)&ss, &len) != 0) return 0;
  if (ss.ss_family == AF_INET6)
    uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
  else
    uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
  lua_pushstring(L, ip);
  return 1;
}

static int req_gc(lua_State *L) {
  req_ud *r = check_req(L);
  sl_unref(L, &r->on_close_ref);
  return 0;
}

/* ---- Lua: servers ------------------------------------------------------------------------------
 */

static void on_listener_closed(uv_handle_t *h) {
  server *s = h->data;
  s->listener_closed = 1;
  server_maybe_free(s);
}

static void server_close(lua_State *L, server *s) {
  if (!s) return;
  int notify = sl_main_state() != NULL; /* no callbacks while the Lua state is closing */
  if (s->ud) s->ud->s = NULL;
  s->ud = NULL;
  sl_unref(L, &s->on_request_ref);
  sl_unref(L, &s->self_ref);
  for (conn *c = s->conns; c; c = c->next) conn_close_with(L, c, notify);
  uv_close((uv_handle_t *)&s->tcp, on_listener_closed);
}

static int server_gc(lua_State *L) {
  server_ud *ud = luaL_checkudata(L, 1, SERVER_MT);
  server_close(L, ud->s);
  return 0;
}

static int server_address(lua_State *L) {
  server_ud *ud = luaL_checkudata(L, 1, SERVER_MT);
  sl_check_open(L, ud->s, "http server");
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char ip[64] = "";
  int rc = uv_tcp_getsockname(&ud->s->tcp, (struct sockaddr *)&ss, &len);
  if (rc != 0) return sl_push_uv_error(L, rc, "address");
  int port;
  if (ss.ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
    port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  } else {
    uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  }
  lua_pushstring(L, ip);
  lua_pushinteger(L, port);
  return 2;
}

static int server_connections(lua_State *L) {
  server_ud *ud = luaL_checkudata(L, 1, SERVER_MT);
  lua_pushinteger(L, ud->s ? ud->s->nconns : 0);
  return 1;
}

static lua_Integer opt_field_int(lua_State *L, const char *k, lua_Integer def) {
  lua_getfield(L, 1, k);
  lua_Integer v = lua_isnil(L, -1) ? def : luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* httpd.listen{host=, port=, on_request=, max_header=, max_body=, idle_timeout=}
 * -> server | nil, message, code */
static int l_listen(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "host");
  const char *host = luaL_optstring(L, -1, "127.0.0.1");
  lua_pop(L, 1);
  lua_Integer port = opt_field_int(L, "port", 8750);
  luaL_argcheck(L, port >= 0 && port <= 65535, 1, "port out of range");
  lua_Integer max_header = opt_field_int(L, "max_header", 16384);
  lua_Integer max_body = opt_field_int(L, "max_body", 65536);
  lua_Integer idle = opt_field_int(L, "idle_timeout", 30);
  luaL_argcheck(L, max_header >= 256 && max_body >= 0 && idle > 0, 1, "bad limits");
  lua_getfield(L, 1, "on_request");
  luaL_checktype(L, -1, LUA_TFUNCTION);
  int cb_idx = lua_gettop(L);

  struct sockaddr_storage addr;
  int rc = strchr(host, ':') ? uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&addr)
                             : uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&addr);
  if (rc != 0) return sl_push_fail(L, "EINVAL", "listen: bad address '%s'", host);
  /* The handle exists before the server it owns: nothing allocated below can be left
   * behind by an error. */
  server_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->s = NULL;
  luaL_setmetatable(L, SERVER_MT);
  int ud_idx = lua_gettop(L);
  server *s = calloc(1, sizeof *s);
  if (!s) return luaL_error(L, "out of memory");
  uv_tcp_init(sl_loop(L), &s->tcp);
  s->tcp.data = s;
  s->on_request_ref = LUA_NOREF;
  s->self_ref = LUA_NOREF;
  rc = uv_tcp_bind(&s->tcp, (struct sockaddr *)&addr, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&s->tcp, 128, on_connection);
  if (rc != 0) {
    uv_close((uv_handle_t *)&s->tcp, on_listener_closed);
    lua_pushnil(L);
    lua_pushfstring(L, "listen on %s:%d: %s", host, (int)port, uv_strerror(rc));
    lua_pushstring(L, uv_err_name(rc));
    return 3;
  }
  s->max_header = (size_t)max_header;
  s->max_body = (size_t)max_body;
  s->idle_ms = (uint64_t)idle * 1000;
  ud->s = s;
  s->ud = ud;
  s->on_request_ref = sl_ref(L, cb_idx);
  s->self_ref = sl_ref(L, ud_idx);
  lua_settop(L, ud_idx);
  return 1;
}

/* ---- reading a file under a root, on the pool -------------------------------------------------
 */

typedef struct file_job {
  char *root, *rel;
  char *data;
  size_t len;
  int err;
  const char *code;
  char msg[256];
} file_job;

static void file_job_free(void *d) {
  file_job *f = d;
  free(f->root);
  free(f->rel);
  free(f->data);
  free(f);
}

static void file_job_run(sl_job *job, void *d) {
  (void)job;
  file_job *f = d;
  char root[PATH_MAX], full[PATH_MAX], joined[PATH_MAX * 2];
  if (!realpath(f->root, root)) {
    f->code = "ENOENT";
    snprintf(f->msg, sizeof f->msg, "no such folder");
    return;
  }
  snprintf(joined, sizeof joined, "%s/%s", root, f->rel);
  if (!realpath(joined, full)) {
    f->code = "ENOENT";
    snprintf(f->msg, sizeof f->msg, "not found");
    return;
  }
  size_t rl = strlen(root);
  /* The resolved path (symbolic links followed) must stay inside the root. */
  if (strncmp(full, root, rl) != 0 || (full[rl] != '/' && full[rl] != '\0')) {
    f->code = "EACCES";
    snprintf(f->msg, sizeof f->msg, "outside the served folder");
    return;
  }
  int fd = open(full, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0) close(fd);
    f->code = "ENOENT";
    snprintf(f->msg, sizeof f->msg, "not a file");
    return;
  }
  if ((size_t)st.st_size > MAX_FILE) {
    close(fd);
    f->code = "EFBIG";
    snprintf(f->msg, sizeof f->msg, "file too large");
    return;
  }
  f->data = malloc((size_t)st.st_size + 1);
  size_t got = 0;
  while (f->data && got < (size_t)st.st_size) {
    ssize_t n = read(fd, f->data + got, (size_t)st.st_size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  close(fd);
  if (!f->data) {
    f->code = "ENOMEM";
    snprintf(f->msg, sizeof f->msg, "out of memory");
    return;
  }
  f->len = got;
}

static int file_job_finish(lua_State *L, void *d) {
  file_job *f = d;
  if (f->code) return sl_push_fail(L, f->code, "%s: %s", f->rel, f->msg);
  lua_pushlstring(L, f->data, f->len);
  return 1;
}

static const sl_job_class file_job_class = {"httpd.read_file", file_job_run, file_job_finish,
                                            file_job_free};

/* httpd.read_file(root, relpath, cb) -> job: reads root/relpath on a worker thread, refusing
 * a path whose resolved form leaves root; cb(bytes) or cb(nil, message, code). */
static int l_read_file(lua_State *L) {
  const char *root = luaL_checkstring(L, 1);
  size_t rlen;
  const char *rel = luaL_checklstring(L, 2, &rlen);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  luaL_argcheck(L, strlen(rel) == rlen, 2, "path contains a NUL byte");
  file_job *f = calloc(1, sizeof *f);
  if (!f) return luaL_error(L, "out of memory");
  f->root = strdup(root);
  f->rel = strdup(rel);
  if (!f->root || !f->rel) {
    file_job_free(f);
    return luaL_error(L, "out of memory");
  }
  return sl_job_submit(L, 3, &file_job_class, f);
}

int luaopen_sluice_httpd(lua_State *L) {
  static const luaL_Reg req_methods[] = {{"respond", req_respond},   {"stream", req_stream},
                                         {"write", req_write},       {"finish", req_finish},
                                         {"on_close", req_on_close}, {"closed", req_closed},
                                         {"peer", req_peer},         {NULL, NULL}};
  luaL_newmetatable(L, REQ_MT);
  luaL_newlib(L, req_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, req_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  static const luaL_Reg server_methods[] = {{"address", server_address},
                                            {"connections", server_connections},
                                            {"close", server_gc},
                                            {NULL, NULL}};
  luaL_newmetatable(L, SERVER_MT);
  luaL_newlib(L, server_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, server_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, server_gc);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"listen", l_listen}, {"read_file", l_read_file}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
