/* http.c: the Lua module sluice.core.http, an HTTP client on the engine's loop.
 *
 * libcurl's multi-socket interface drives every transfer from the one libuv loop (the
 * pattern of curl's docs/examples/multi-uv.c): one uv_poll_t per socket curl asks us to
 * watch and one uv_timer_t for curl's timeout. Unlike multi-uv.c, a 0 ms timeout stays
 * 0 ms (the timer fires on the next loop iteration without blocking), so back-to-back
 * requests are not capped at one per millisecond.
 *
 * Lua is never called from inside a curl callback. Curl's write callback only appends to
 * C buffers and puts the transfer on a "news" list; after curl_multi_socket_action returns,
 * the module reads finished transfers (curl_multi_info_read) and then delivers the news
 * (streamed chunks, progress, completion) to Lua. A Lua callback may therefore start or
 * cancel any transfer, including the one being delivered.
 *
 * Downloads go to a file through libuv's asynchronous file writes (the loop thread never
 * writes file data itself); when too much data waits to be written the transfer pauses.
 *
 * The policy (JSON bodies, retries, limits, providers) lives in lua/sluice/runtime/http.lua and
 * the modules built on it.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "sluice.h"

#define REQUEST_MT "sluice.http.request"
#define STATE_MT "sluice.http.state"

/* A download writes to its file in pieces of this size... */
#define FILE_WRITE_CHUNK (256 * 1024)
/* ...and pauses while more than this much waits to be written. */
#define FILE_PENDING_MAX (8 * 1024 * 1024)
/* Easy handles kept for reuse. */
#define EASY_CACHE 128

typedef struct buf {
  char *data;
  size_t len, cap;
} buf;

/* Appends n bytes; returns 0, or -1 when out of memory (b is unchanged then). */
static int buf_append(buf *b, const char *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n + 1) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

static void buf_free(buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

typedef struct transfer transfer;

typedef struct request_ud {
  transfer *t; /* NULL once the request completed or was cancelled */
} request_ud;

typedef struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
  struct sock_ctx *prev, *next;
} sock_ctx;

struct transfer {
  CURL *easy;
  int in_multi;
  struct curl_slist *headers;
  curl_mime *mime;
  char errbuf[CURL_ERROR_SIZE];
  char what[320]; /* "POST http://host/path" for messages; never the query string */
  buf body;       /* the response body (unless streamed or downloaded) */
  buf head;       /* header lines of the last response */
  buf chunk;      /* stream: data not yet handed to Lua; download: data not yet written */
  int done_ref, stream_ref, progress_ref, body_ref, self_ref;
  request_ud *ud;
  transfer *prev, *next; /* every live transfer */
  transfer *news_next;
  int in_news;   /* on the news list, or being delivered: cancel defers the free */
  int cancelled; /* no more callbacks; freed once nothing refers to it */
  int finished;  /* curl is done with it; result holds the outcome */
  CURLcode result;
  int decided;   /* the status of the response that carries the body is known */
  int body_mode; /* 0 buffer, 1 stream to Lua, 2 file */
  int progress_dirty;
  curl_off_t received;
  curl_off_t max_bytes; /* 0: no cap; more body bytes than this end the transfer */
  int too_big;
  /* download */
  uv_file fd;
  int64_t offset, resume_from;
  int writes_pending;
  size_t pending_bytes;
  int paused;
  int write_error; /* a libuv error code */
  int orphan;      /* the module shut down while writes were pending */
};

static struct {
  CURLM *multi;
  uv_timer_t *timer;
  transfer *transfers;
  transfer *news_head, *news_tail;
  sock_ctx *socks;
  int active; /* transfers in the multi handle or writing: handles are referenced */
  int nsocks;
  CURL *easy_cache[EASY_CACHE];
  int neasy;
  int ready;
  long total_requests;
} H;

static void process(void);

/* ---- loop handles: referenced only while transfers are active ------------------------- */

static void set_refs(int on) {
  if (H.timer) {
    if (on)
      uv_ref((uv_handle_t *)H.timer);
    else
      uv_unref((uv_handle_t *)H.timer);
  }
  for (sock_ctx *c = H.socks; c; c = c->next) {
    if (on)
      uv_ref((uv_handle_t *)&c->poll);
    else
      uv_unref((uv_handle_t *)&c->poll);
  }
}

static void active_inc(void) {
  if (H.active++ == 0) set_refs(1);
}

static void active_dec(void) {
  if (--H.active == 0) set_refs(0);
}

/* ---- curl's socket and timer callbacks ------------------------------------------------ */

static void sock_closed(uv_handle_t *h) { free(h->data); }

static void sock_close(sock_ctx *c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    H.socks = c->next;
  if (c->next) c->next->prev = c->prev;
  H.nsocks--;
  uv_poll_stop(&c->poll);
  uv_close((uv_handle_t *)&c->poll, sock_closed);
}

static void socket_action(curl_socket_t fd, int flags) {
  int running = 0;
  curl_multi_socket_action(H.multi, fd, flags, &running);
  process();
}

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_ctx *c = p->data;
  int flags = 0;
  if (status < 0) flags |= CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  socket_action(c->fd, flags);
}

static int on_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
  (void)easy;
  (void)userp;
  sock_ctx *c = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (c) {
      curl_multi_assign(H.multi, s, NULL);
      sock_close(c);
    }
    return 0;
  }
  if (!c) {
    c = calloc(1, sizeof *c);
    if (!c) return -1;
    if (uv_poll_init_socket(sl_loop(NULL), &c->poll, s) != 0) {
      free(c);
      return -1;
    }
    c->fd = s;
    c->poll.data = c;
    c->next = H.socks;
    if (H.socks) H.socks->prev = c;
    H.socks = c;
    H.nsocks++;
    if (H.active == 0) uv_unref((uv_handle_t *)&c->poll);
    curl_multi_assign(H.multi, s, c);
  }
  int events = 0;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  uv_poll_start(&c->poll, events, on_poll);
  return 0;
}

static void on_timer(uv_timer_t *t) {
  (void)t;
  socket_action(CURL_SOCKET_TIMEOUT, 0);
}

/* curl asks for one timer; -1 deletes it and 0 means "as soon as possible": a 0 ms libuv
 * timer fires on the next loop iteration (the loop does not block while it is due). */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi;
  (void)userp;
  if (timeout_ms < 0)
    uv_timer_stop(H.timer);
  else
    uv_timer_start(H.timer, on_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

/* ---- transfers ------------------------------------------------------------------------ */

static void news_push(transfer *t) {
  if (t->in_news) return;
  t->in_news = 1;
  t->news_next = NULL;
  if (H.news_tail)
    H.news_tail->news_next = t;
  else
    H.news_head = t;
  H.news_tail = t;
}

static void release_easy(CURL *easy) {
  if (H.neasy < EASY_CACHE) {
    curl_easy_reset(easy);
    H.easy_cache[H.neasy++] = easy;
  } else {
    curl_easy_cleanup(easy);
  }
}

/* Drops the transfer's Lua references. Only with a live Lua state. */
static void release_refs(lua_State *L, transfer *t) {
  sl_unref(L, &t->done_ref);
  sl_unref(L, &t->stream_ref);
  sl_unref(L, &t->progress_ref);
  sl_unref(L, &t->body_ref);
  sl_unref(L, &t->self_ref);
  if (t->ud) t->ud->t = NULL;
  t->ud = NULL;
}

/* Takes the easy handle out of the multi handle; cannot fail. Not from curl callbacks. */
static void detach(transfer *t) {
  if (t->in_multi) {
    curl_multi_remove_handle(H.multi, t->easy);
    t->in_multi = 0;
    active_dec();
  }
}

/* Frees the C side of a transfer; its Lua references must be gone already. */
static void transfer_free(transfer *t) {
  detach(t);
  if (t->prev)
    t->prev->next = t->next;
  else if (H.transfers == t)
    H.transfers = t->next;
  if (t->next) t->next->prev = t->prev;
  t->prev = t->next = NULL;
  if (t->easy) release_easy(t->easy);
  curl_slist_free_all(t->headers);
  curl_mime_free(t->mime);
  buf_free(&t->body);
  buf_free(&t->head);
  buf_free(&t->chunk);
  if (t->fd >= 0) close(t->fd); /* metadata only: the data was written by the pool */
  free(t);
}

/* Frees a cancelled transfer once nothing refers to it any more. */
static void maybe_free(transfer *t) {
  if (t->cancelled && !t->in_news && t->writes_pending == 0) transfer_free(t);
}

typedef struct write_req {
  uv_fs_t req;
  transfer *t;
  char *data;
  size_t len;
} write_req;

static void on_file_written(uv_fs_t *req) {
  write_req *w = (write_req *)req;
  transfer *t = w->t;
  ssize_t r = req->result;
  size_t len = w->len;
  uv_fs_req_cleanup(req);
  free(w->data);
  free(w);
  t->writes_pending--;
  t->pending_bytes -= len;
  if (t->orphan) {
    if (t->writes_pending == 0) {
      if (t->fd >= 0) close(t->fd);
      t->fd = -1;
      free(t);
    }
    return;
  }
  if (t->writes_pending == 0) active_dec();
  if (r < 0 && !t->write_error) t->write_error = (int)r;
  if (t->cancelled) {
    maybe_free(t);
    return;
  }
  if (t->paused && t->pending_bytes < FILE_PENDING_MAX / 2 && !t->write_error) {
    t->paused = 0;
    curl_easy_pause(t->easy, CURLPAUSE_CONT);
  }
  if (t->finished && t->writes_pending == 0) news_push(t);
  process();
}

/* Hands the buffered download data to an asynchronous write at the current offset. */
static int flush_file(transfer *t) {
  if (t->chunk.len == 0) return 0;
  write_req *w = calloc(1, sizeof *w);
  if (!w) return UV_ENOMEM;
  w->t = t;
  w->data = t->chunk.data;
  w->len = t->chunk.len;
  t->chunk.data = NULL;
  t->chunk.len = t->chunk.cap = 0;
  uv_buf_t b = uv_buf_init(w->data, (unsigned int)w->len);
  int rc = uv_fs_write(sl_loop(NULL), &w->req, t->fd, &b, 1, t->offset, on_file_written);
  if (rc != 0) {
    free(w->data);
    free(w);
    return rc;
  }
  t->offset += (int64_t)w->len;
  if (t->writes_pending++ == 0) active_inc();
  t->pending_bytes += w->len;
  return 0;
}

/* Decides where the body of the response goes once its status is known: a download or a
 * stream takes only a 2xx body; an error body is buffered so the caller can show it. */
static void decide(transfer *t) {
  if (t->decided) return;
  t->decided = 1;
  long code = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
  int ok = code >= 200 && code < 300;
  if (t->fd >= 0 && ok) {
    t->body_mode = 2;
    if (t->resume_from > 0 && code != 206) {
      /* The server ignored the Range: start the file over. */
      t->offset = 0;
      if (ftruncate(t->fd, 0) != 0 && !t->write_error) t->write_error = UV_EIO;
    }
  } else if (t->stream_ref != LUA_NOREF && ok) {
    t->body_mode = 1;
  } else {
    t->body_mode = 0;
  }
}

static size_t on_write(char *p, size_t size, size_t n, void *userp) {
  transfer *t = userp;
  size_t len = size * n;
  decide(t);
  /* Bytes as delivered (after Content-Encoding): a compressed bomb is capped too. */
  if (t->max_bytes > 0 && t->received + (curl_off_t)len > t->max_bytes) {
    t->too_big = 1;
    return 0; /* CURLE_WRITE_ERROR */
  }
  switch (t->body_mode) {
    case 2:
      if (t->write_error) return 0;
      if (t->pending_bytes > FILE_PENDING_MAX) {
        t->paused = 1;
        return CURL_WRITEFUNC_PAUSE;
      }
      if (buf_append(&t->chunk, p, len) != 0) return 0;
      if (t->chunk.len >= FILE_WRITE_CHUNK) {
        int rc = flush_file(t);
        if (rc != 0) {
          t->write_error = rc;
          return 0;
        }
      }
      break;
    case 1:
      if (buf_append(&t->chunk, p, len) != 0) return 0;
      news_push(t);
      break;
    default:
      if (buf_append(&t->body, p, len) != 0) return 0;
  }
  t->received += (curl_off_t)len;
  if (t->progress_ref != LUA_NOREF) {
    t->progress_dirty = 1;
    news_push(t);
  }
  return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *userp) {
  transfer *t = userp;
  size_t len = size * n;
  /* A new status line starts a new response (redirects, 100 Continue): keep the last. */
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) t->head.len = 0;
  if (buf_append(&t->head, p, len) != 0) return 0;
  return len;
}

/* Moves every finished transfer from curl's message queue onto the news list. */
static void collect_done(void) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(H.multi, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    transfer *t = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
    CURLcode result = msg->data.result;
    if (!t) continue;
    detach(t); /* msg is invalid from here on */
    t->finished = 1;
    t->result = result;
    if (t->body_mode == 2 && t->chunk.len) {
      int rc = flush_file(t);
      if (rc != 0 && !t->write_error) t->write_error = rc;
    }
    if (t->writes_pending == 0) news_push(t);
  }
}

static const char *curl_code_name(CURLcode c) {
  switch (c) {
    case CURLE_OPERATION_TIMEDOUT:
      return "ETIMEDOUT";
    case CURLE_COULDNT_CONNECT:
      return "ECONNREFUSED";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return "ENOTFOUND";
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return "ECONNRESET";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
      return "ETLS";
    case CURLE_WRITE_ERROR:
      return "EWRITE";
    case CURLE_TOO_MANY_REDIRECTS:
      return "EREDIRECT";
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return "EINVAL";
    case CURLE_OUT_OF_MEMORY:
      return "ENOMEM";
    default:
      return "EHTTP";
  }
}

/* Pushes the response headers as a table: lower-case names; repeated ones joined by ", ". */
static void push_headers(lua_State *L, const buf *head) {
  lua_newtable(L);
  const char *p = head->data, *end = head->data ? head->data + head->len : NULL;
  if (!p) return;
  /* skip the status line */
  const char *nl = memchr(p, '\n', (size_t)(end - p));
  p = nl ? nl + 1 : end;
  char name[128];
  while (p < end) {
    nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    const char *colon = memchr(p, ':', (size_t)(le - p));
    if (colon && (size_t)(colon - p) < sizeof name) {
      size_t nlen = (size_t)(colon - p);
      for (size_t i = 0; i < nlen; i++) name[i] = (char)tolower((unsigned char)p[i]);
      const char *v = colon + 1, *ve = le;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      lua_pushlstring(L, name, nlen);
      lua_pushvalue(L, -1);
      lua_rawget(L, -3);
      if (lua_isstring(L, -1)) {
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      }
      lua_rawset(L, -3);
    }
    p = nl ? nl + 1 : end;
  }
}

/* Delivers a finished transfer to Lua and frees it. */
static void complete(lua_State *L, transfer *t) {
  sl_push_ref(L, t->done_ref);
  int n;
  if (t->result != CURLE_OK || t->write_error || t->too_big) {
    if (t->too_big) {
      n = sl_push_fail(L, "ETOOBIG", "http: %s: the reply is larger than %I bytes (max_bytes)",
                       t->what, (lua_Integer)t->max_bytes);
    } else if (t->write_error && (t->result == CURLE_OK || t->result == CURLE_WRITE_ERROR)) {
      n = sl_push_fail(L, "EWRITE", "http: %s: cannot write the download: %s", t->what,
                       uv_strerror(t->write_error));
    } else {
      const char *detail = t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->result);
      n = sl_push_fail(L, curl_code_name(t->result), "http: %s: %s", t->what, detail);
    }
  } else {
    long code = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
    lua_pushinteger(L, code);
    push_headers(L, &t->head);
    if (t->body_mode == 0)
      lua_pushlstring(L, t->body.data ? t->body.data : "", t->body.len);
    else
      lua_pushnil(L);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)t->received);
    lua_setfield(L, -2, "bytes");
    double total = 0;
    curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME, &total);
    lua_pushnumber(L, total);
    lua_setfield(L, -2, "seconds");
    long ver = 0;
    curl_easy_getinfo(t->easy, CURLINFO_HTTP_VERSION, &ver);
    lua_pushstring(L, ver == CURL_HTTP_VERSION_2_0 ? "2"
                      : ver == CURL_HTTP_VERSION_3 ? "3"
                                                   : "1.1");
    lua_setfield(L, -2, "http_version");
    lua_pushboolean(L, t->body_mode == 2 && t->resume_from > 0 && code == 206);
    lua_setfield(L, -2, "resumed");
    n = 4;
  }
  release_refs(L, t);
  t->cancelled = 1; /* nothing more goes to Lua */
  t->in_news = 0;
  transfer_free(t);
  sl_call(L, n, 0);
}

/* Reads finished transfers, then hands streamed data, progress and completions to Lua. */
static void process(void) {
  lua_State *L = sl_main_state();
  collect_done();
  while (H.news_head) {
    transfer *t = H.news_head;
    H.news_head = t->news_next;
    if (!H.news_head) H.news_tail = NULL;
    t->news_next = NULL;
    /* t->in_news stays set while it is delivered, so a cancel from Lua defers the free. */
    if (!t->cancelled && t->body_mode == 1 && t->chunk.len) {
      sl_push_ref(L, t->stream_ref);
      lua_pushlstring(L, t->chunk.data, t->chunk.len);
      t->chunk.len = 0;
      sl_call(L, 1, 0);
    }
    if (!t->cancelled && t->progress_dirty) {
      t->progress_dirty = 0;
      curl_off_t total = -1;
      curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &total);
      sl_push_ref(L, t->progress_ref);
      lua_pushinteger(L, (lua_Integer)(t->resume_from + t->received));
      if (total >= 0)
        lua_pushinteger(L, (lua_Integer)(total + t->resume_from));
      else
        lua_pushnil(L);
      sl_call(L, 2, 0);
    }
    if (!t->cancelled && t->finished && t->writes_pending == 0) {
      complete(L, t);
      continue;
    }
    t->in_news = 0;
    maybe_free(t);
  }
}

/* ---- Lua API -------------------------------------------------------------------------- */

static double opt_number(lua_State *L, int idx, const char *field, double def) {
  lua_getfield(L, idx, field);
  double v = def;
  if (!lua_isnil(L, -1)) {
    if (!lua_isnumber(L, -1)) luaL_error(L, "http.request: option '%s' must be a number", field);
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

static const char *opt_string(lua_State *L, int idx, const char *field, size_t *len) {
  lua_getfield(L, idx, field);
  const char *s = NULL;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "http.request: option '%s' must be a string", field);
    s = lua_tolstring(L, -1, len);
  }
  lua_pop(L, 1); /* the string stays alive: the options table holds it */
  return s;
}

static int opt_function(lua_State *L, int idx, const char *field) {
  lua_getfield(L, idx, field);
  int ref = LUA_NOREF;
  if (!lua_isnil(L, -1)) {
    if (!lua_isfunction(L, -1))
      luaL_error(L, "http.request: option '%s' must be a function", field);
    ref = sl_ref(L, -1);
  }
  lua_pop(L, 1);
  return ref;
}

static void describe(transfer *t, const char *method, const char *url) {
  size_t ulen = strcspn(url, "?#");
  snprintf(t->what, sizeof t->what, "%s %.*s", method, (int)(ulen > 256 ? 256 : ulen), url);
}

/* Builds the multipart body from a list of {name=, data=|file=, filename=, type=}. */
static const char *build_mime(lua_State *L, int idx, transfer *t) {
  t->mime = curl_mime_init(t->easy);
  if (!t->mime) return "out of memory";
  lua_Integer n = luaL_len(L, idx);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, idx, i);
    if (!lua_istable(L, -1))
      luaL_error(L, "http.request: multipart part %d must be a table", (int)i);
    int p = lua_gettop(L);
    curl_mimepart *part = curl_mime_addpart(t->mime);
    size_t len = 0;
    const char *name = opt_string(L, p, "name", NULL);
    if (!name) luaL_error(L, "http.request: multipart part %d has no name", (int)i);
    curl_mime_name(part, name);
    const char *data = opt_string(L, p, "data", &len);
    const char *file = opt_string(L, p, "file", NULL);
    if (data) {
      curl_mime_data(part, data, len); /* copies */
    } else if (file) {
      if (curl_mime_filedata(part, file) != CURLE_OK) {
        lua_pop(L, 1);
        return "cannot read a multipart file";
      }
    } else {
      luaL_error(L, "http.request: multipart part '%s' needs data or file", name);
    }
    const char *filename = opt_string(L, p, "filename", NULL);
    if (filename) curl_mime_filename(part, filename);
    const char *type = opt_string(L, p, "type", NULL);
    if (type) curl_mime_type(part, type);
    lua_pop(L, 1);
  }
  return NULL;
}

/* Raises unless every option of http.request has the right type (and the parts of a
 * multipart body are complete): called before anything is allocated, so that a wrong
 * argument leaves nothing behind. */
static void check_options(lua_State *L) {
  static const char *const strings[] = {"url", "method", "body", "download", "cainfo", NULL};
  static const char *const numbers[] = {"timeout", "connect_timeout", "resume_from", NULL};
  static const char *const functions[] = {"stream", "progress", NULL};
  for (int i = 0; strings[i]; i++) {
    int t = lua_getfield(L, 1, strings[i]);
    if (t != LUA_TNIL && t != LUA_TSTRING)
      luaL_error(L, "http.request: option '%s' must be a string, got %s", strings[i], luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  for (int i = 0; numbers[i]; i++) {
    int t = lua_getfield(L, 1, numbers[i]);
    if (t != LUA_TNIL && t != LUA_TNUMBER)
      luaL_error(L, "http.request: option '%s' must be a number, got %s", numbers[i], luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  for (int i = 0; functions[i]; i++) {
    int t = lua_getfield(L, 1, functions[i]);
    if (t != LUA_TNIL && t != LUA_TFUNCTION)
      luaL_error(L, "http.request: option '%s' must be a function, got %s", functions[i], luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  int t = lua_getfield(L, 1, "headers");
  if (t == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      int et = lua_geti(L, -1, i);
      if (et != LUA_TSTRING)
        luaL_error(L, "http.request: headers[%d] must be a string, got %s", (int)i, luaL_typename(L, -1));
      lua_pop(L, 1);
    }
  } else if (t != LUA_TNIL) {
    luaL_error(L, "http.request: option 'headers' must be a list of strings, got %s", luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  t = lua_getfield(L, 1, "multipart");
  if (t == LUA_TTABLE) {
    int list = lua_gettop(L);
    lua_Integer n = luaL_len(L, list);
    for (lua_Integer i = 1; i <= n; i++) {
      if (lua_geti(L, list, i) != LUA_TTABLE)
        luaL_error(L, "http.request: multipart part %d must be a table, got %s", (int)i, luaL_typename(L, -1));
      static const char *const fields[] = {"name", "data", "file", "filename", "type", NULL};
      for (int f = 0; fields[f]; f++) {
        int ft = lua_getfield(L, -1, fields[f]);
        if (ft != LUA_TNIL && ft != LUA_TSTRING)
          luaL_error(L, "http.request: multipart part %d: '%s' must be a string, got %s", (int)i, fields[f],
                     luaL_typename(L, -1));
        lua_pop(L, 1);
      }
      if (lua_getfield(L, -1, "name") == LUA_TNIL)
        luaL_error(L, "http.request: multipart part %d has no name", (int)i);
      lua_pop(L, 1);
      int has_data = lua_getfield(L, -1, "data") != LUA_TNIL;
      int has_file = lua_getfield(L, -2, "file") != LUA_TNIL;
      lua_pop(L, 2);
      if (!has_data && !has_file) luaL_error(L, "http.request: multipart part %d needs data or file", (int)i);
      lua_pop(L, 1);
    }
  } else if (t != LUA_TNIL) {
    luaL_error(L, "http.request: option 'multipart' must be a list of parts, got %s", luaL_typename(L, -1));
  }
  lua_pop(L, 1);
}

/* http.request(opts, done) -> request | nil, message, code
 * opts: method, url, headers (list of "Name: value"), body (string), multipart (list),
 * timeout, connect_timeout (seconds), stream (fn(chunk)), download (path), resume_from
 * (bytes already in the file), progress (fn(bytes, total|nil)), follow (default true),
 * cainfo (a CA bundle file to verify the server with; verification is always on).
 * done(status, headers, body|nil, info) or done(nil, message, code), called once, never
 * after the request was cancelled. */
static int l_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  check_options(L); /* every argument is checked before anything is allocated */
  /* The handle exists before what it owns: an error past this point frees nothing twice and
   * leaves nothing behind (it has no transfer until the end). */
  request_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0); /* 3 */
  ud->t = NULL;
  luaL_setmetatable(L, REQUEST_MT);
  const char *url = opt_string(L, 1, "url", NULL);
  if (!url) return luaL_error(L, "http.request: option 'url' is required");
  const char *method = opt_string(L, 1, "method", NULL);
  if (!method) method = "GET";
  size_t body_len = 0;
  const char *body = opt_string(L, 1, "body", &body_len);
  const char *download = opt_string(L, 1, "download", NULL);
  double timeout = opt_number(L, 1, "timeout", 0);
  double connect_timeout = opt_number(L, 1, "connect_timeout", 0);
  double resume_from = opt_number(L, 1, "resume_from", 0);
  double max_bytes = opt_number(L, 1, "max_bytes", 0);

  transfer *t = calloc(1, sizeof *t);
  if (!t) return luaL_error(L, "http.request: out of memory");
  t->fd = -1;
  if (max_bytes >= 1) t->max_bytes = (curl_off_t)max_bytes;
  t->done_ref = t->stream_ref = t->progress_ref = t->body_ref = t->self_ref = LUA_NOREF;
  describe(t, method, url);
  t->easy = H.neasy ? H.easy_cache[--H.neasy] : curl_easy_init();
  if (!t->easy) {
    free(t);
    return luaL_error(L, "http.request: cannot create a curl handle");
  }
  /* From here on, errors must free t: collect them in err. */
  const char *err = NULL;
  CURL *e = t->easy;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)t);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  /* Waiting to multiplex only pays where HTTP/2 can be negotiated (ALPN over TLS). On plain
   * http:// it would hold every request to a host until the first one's reply arrives. */
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, strncasecmp(url, "https:", 6) == 0 ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "sluice/" SLUICE_VERSION);
  /* Compressed transfer encodings for API replies; a download stores the bytes as served
   * (byte offsets must match the file for Range resumes). */
  if (!download) curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  const char *cainfo = opt_string(L, 1, "cainfo", NULL);
  if (cainfo) curl_easy_setopt(e, CURLOPT_CAINFO, cainfo); /* copied by curl */
  /* Loopback never goes through a proxy, unless no_proxy says otherwise. */
  if (!getenv("no_proxy") && !getenv("NO_PROXY"))
    curl_easy_setopt(e, CURLOPT_NOPROXY, "localhost,127.0.0.1,::1");
  lua_getfield(L, 1, "follow");
  int follow = lua_isnil(L, -1) || lua_toboolean(L, -1);
  lua_pop(L, 1);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, (long)follow);
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, 8L);
  if (timeout > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000 + 0.5));
  if (connect_timeout > 0)
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(connect_timeout * 1000 + 0.5));

  /* headers */
  lua_getfield(L, 1, "headers");
  if (lua_istable(L, -1)) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, -1, i);
      const char *h = lua_tostring(L, -1);
      if (h) {
        struct curl_slist *nl = curl_slist_append(t->headers, h);
        if (!nl)
          err = "out of memory";
        else
          t->headers = nl;
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (t->headers) curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);

  /* body */
  lua_getfield(L, 1, "multipart");
  int has_mime = lua_istable(L, -1);
  if (has_mime && !err) err = build_mime(L, lua_gettop(L), t);
  lua_pop(L, 1);
  if (has_mime) {
    curl_easy_setopt(e, CURLOPT_MIMEPOST, t->mime);
  } else if (body) {
    lua_getfield(L, 1, "body");
    t->body_ref = sl_ref(L, -1); /* keeps the string alive: curl reads it in place */
    lua_pop(L, 1);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  }
  if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (strcmp(method, "GET") == 0 && !body && !has_mime) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else if (!(strcmp(method, "POST") == 0 && (body || has_mime))) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }

  /* download */
  if (download && !err) {
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (resume_from > 0 ? 0 : O_TRUNC);
    t->fd = open(download, flags, 0644);
    if (t->fd < 0) {
      int uverr = -errno;
      lua_pushnil(L);
      lua_pushfstring(L, "http: %s: cannot open %s: %s", t->what, download, uv_strerror(uverr));
      lua_pushstring(L, uv_err_name(uverr));
      release_refs(L, t);
      transfer_free(t);
      return 3;
    }
    if (resume_from > 0) {
      t->resume_from = (int64_t)resume_from;
      t->offset = t->resume_from;
      char range[32];
      snprintf(range, sizeof range, "%lld-", (long long)t->resume_from);
      curl_easy_setopt(e, CURLOPT_RANGE, range); /* copied by curl */
    }
  }
  if (err) {
    int n = sl_push_fail(L, "EINVAL", "http: %s: %s", t->what, err);
    release_refs(L, t);
    transfer_free(t);
    return n;
  }
  t->stream_ref = opt_function(L, 1, "stream");
  t->progress_ref = opt_function(L, 1, "progress");
  t->done_ref = sl_ref(L, 2);

  ud->t = t;
  t->ud = ud;
  lua_pushvalue(L, 3);
  t->self_ref = sl_ref(L, -1);

  t->next = H.transfers;
  if (H.transfers) H.transfers->prev = t;
  H.transfers = t;
  CURLMcode mc = curl_multi_add_handle(H.multi, e);
  if (mc != CURLM_OK) {
    lua_pop(L, 1);
    release_refs(L, t);
    ud->t = NULL;
    t->ud = NULL;
    lua_pushnil(L);
    lua_pushfstring(L, "http: %s: %s", t->what, curl_multi_strerror(mc));
    lua_pushliteral(L, "EHTTP");
    transfer_free(t);
    return 3;
  }
  t->in_multi = 1;
  active_inc();
  H.total_requests++;
  return 1;
}

/* request:cancel(): aborts the transfer; no callback runs afterwards. Idempotent. */
static int request_cancel(lua_State *L) {
  request_ud *ud = luaL_checkudata(L, 1, REQUEST_MT);
  transfer *t = ud->t;
  if (!t) return 0;
  release_refs(L, t);
  t->cancelled = 1;
  /* A download keeps every byte received so far: a later request can resume from it. */
  if (t->body_mode == 2 && t->chunk.len && !t->write_error) flush_file(t);
  detach(t);
  maybe_free(t);
  return 0;
}

static int request_active(lua_State *L) {
  request_ud *ud = luaL_checkudata(L, 1, REQUEST_MT);
  lua_pushboolean(L, ud->t != NULL);
  return 1;
}

static int request_tostring(lua_State *L) {
  request_ud *ud = luaL_checkudata(L, 1, REQUEST_MT);
  if (ud->t)
    lua_pushfstring(L, "sluice.http.request (%s)", ud->t->what);
  else
    lua_pushliteral(L, "sluice.http.request (done)");
  return 1;
}

/* http.configure{max_host_connections=, max_total_connections=, max_connects=} */
static int l_configure(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  static const struct {
    const char *name;
    CURLMoption opt;
  } opts[] = {{"max_host_connections", CURLMOPT_MAX_HOST_CONNECTIONS},
              {"max_total_connections", CURLMOPT_MAX_TOTAL_CONNECTIONS},
              {"max_connects", CURLMOPT_MAXCONNECTS}};
  for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
    lua_getfield(L, 1, opts[i].name);
    if (!lua_isnil(L, -1)) {
      lua_Integer v = luaL_checkinteger(L, -1);
      luaL_argcheck(L, v >= 0, 1, "connection limits must be >= 0");
      curl_multi_setopt(H.multi, opts[i].opt, (long)v);
    }
    lua_pop(L, 1);
  }
  return 0;
}

/* http.stats() -> {active=, sockets=, requests=}: for diagnostics and tests. */
static int l_stats(lua_State *L) {
  int n = 0;
  for (transfer *t = H.transfers; t; t = t->next) n++;
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "transfers");
  lua_pushinteger(L, H.active);
  lua_setfield(L, -2, "active");
  lua_pushinteger(L, H.nsocks);
  lua_setfield(L, -2, "sockets");
  lua_pushinteger(L, H.total_requests);
  lua_setfield(L, -2, "requests");
  return 1;
}

/* ---- reading a file as base64 on a worker thread (image payloads for VLM requests) ---- */

typedef struct b64_job {
  char *path;
  char *out;
  size_t out_len;
  int err; /* a libuv error code */
} b64_job;

static void b64_run(sl_job *job, void *data) {
  (void)job;
  b64_job *b = data;
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  int fd = open(b->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    b->err = -errno;
    return;
  }
  off_t size = lseek(fd, 0, SEEK_END);
  if (size < 0 || lseek(fd, 0, SEEK_SET) < 0) {
    b->err = -errno;
    close(fd);
    return;
  }
  unsigned char *in = malloc((size_t)size + 1);
  b->out = malloc(((size_t)size + 2) / 3 * 4 + 1);
  if (!in || !b->out) {
    free(in);
    b->err = UV_ENOMEM;
    close(fd);
    return;
  }
  size_t got = 0;
  while (got < (size_t)size) {
    ssize_t r = read(fd, in + got, (size_t)size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  char *o = b->out;
  size_t i = 0;
  for (; i + 2 < got; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
    *o++ = tbl[v >> 18 & 63];
    *o++ = tbl[v >> 12 & 63];
    *o++ = tbl[v >> 6 & 63];
    *o++ = tbl[v & 63];
  }
  if (i < got) {
    unsigned v = (unsigned)in[i] << 16 | (i + 1 < got ? (unsigned)in[i + 1] << 8 : 0);
    *o++ = tbl[v >> 18 & 63];
    *o++ = tbl[v >> 12 & 63];
    *o++ = i + 1 < got ? tbl[v >> 6 & 63] : '=';
    *o++ = '=';
  }
  b->out_len = (size_t)(o - b->out);
  free(in);
}

static int b64_finish(lua_State *L, void *data) {
  b64_job *b = data;
  if (b->err) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot read %s: %s", b->path, uv_strerror(b->err));
    lua_pushstring(L, uv_err_name(b->err));
    return 3;
  }
  lua_pushlstring(L, b->out, b->out_len);
  return 1;
}

static void b64_free(void *data) {
  b64_job *b = data;
  free(b->path);
  free(b->out);
  free(b);
}

static const sl_job_class b64_class = {"http.read_base64", b64_run, b64_finish, b64_free};

/* http.read_base64(path, done) -> job: reads a file and base64-encodes it on a worker
 * thread; done(string) or done(nil, message, code). */
static int l_read_base64(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  b64_job *b = calloc(1, sizeof *b);
  if (!b || !(b->path = strdup(path))) {
    free(b);
    return luaL_error(L, "http.read_base64: out of memory");
  }
  return sl_job_submit(L, 2, &b64_class, b);
}

static void timer_closed(uv_handle_t *h) { free(h); }

/* Runs when the Lua state closes: aborts every transfer without callbacks and closes the
 * loop handles. Downloads with writes in flight are freed when their writes finish. */
static int state_gc(lua_State *L) {
  (void)L;
  if (!H.ready) return 0;
  H.ready = 0;
  while (H.transfers) {
    transfer *t = H.transfers;
    H.transfers = t->next;
    t->prev = t->next = NULL;
    if (t->in_multi) {
      curl_multi_remove_handle(H.multi, t->easy);
      t->in_multi = 0;
    }
    if (t->ud) t->ud->t = NULL;
    if (t->writes_pending > 0) {
      /* keep only what the write callbacks need */
      curl_easy_cleanup(t->easy);
      curl_slist_free_all(t->headers);
      curl_mime_free(t->mime);
      buf_free(&t->body);
      buf_free(&t->head);
      buf_free(&t->chunk);
      t->orphan = 1;
    } else {
      curl_easy_cleanup(t->easy);
      t->easy = NULL;
      curl_slist_free_all(t->headers);
      curl_mime_free(t->mime);
      buf_free(&t->body);
      buf_free(&t->head);
      buf_free(&t->chunk);
      if (t->fd >= 0) close(t->fd);
      free(t);
    }
  }
  H.news_head = H.news_tail = NULL;
  curl_multi_cleanup(H.multi);
  H.multi = NULL;
  while (H.socks) sock_close(H.socks);
  for (int i = 0; i < H.neasy; i++) curl_easy_cleanup(H.easy_cache[i]);
  H.neasy = 0;
  uv_close((uv_handle_t *)H.timer, timer_closed);
  H.timer = NULL;
  H.active = 0;
  return 0;
}

int luaopen_sluice_http(lua_State *L) {
  if (!H.ready) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      return luaL_error(L, "http: cannot initialise libcurl");
    H.multi = curl_multi_init();
    H.timer = malloc(sizeof *H.timer);
    if (!H.multi || !H.timer) return luaL_error(L, "http: out of memory");
    uv_timer_init(sl_loop(L), H.timer);
    uv_unref((uv_handle_t *)H.timer);
    curl_multi_setopt(H.multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(H.multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(H.multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(H.multi, CURLMOPT_MAX_HOST_CONNECTIONS, 64L);
    curl_multi_setopt(H.multi, CURLMOPT_MAXCONNECTS, 256L);
    H.ready = 1;
  }
  static const luaL_Reg req_methods[] = {{"cancel", request_cancel},
                                         {"close", request_cancel},
                                         {"active", request_active},
                                         {NULL, NULL}};
  luaL_newmetatable(L, REQUEST_MT);
  luaL_newlib(L, req_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, request_cancel);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, request_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);

  static const luaL_Reg funcs[] = {{"request", l_request},
                                   {"configure", l_configure},
                                   {"stats", l_stats},
                                   {"read_base64", l_read_base64},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_pushstring(L, curl_version());
  lua_setfield(L, -2, "curl_version");
  /* A sentinel whose finalizer shuts the client down with the Lua state. */
  lua_newuserdatauv(L, 1, 0);
  if (luaL_newmetatable(L, STATE_MT)) {
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "_state");
  return 1;
}
