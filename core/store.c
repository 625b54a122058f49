/* store.c: SQLite for the job store, as the Lua module sluice.core.store.
 *
 * A database handle holds two connections to one file in WAL mode: a writer and a reader,
 * each guarded by its own mutex, so a write transaction and a read can run at the same time
 * on two worker threads. Writes and reads run on the engine's thread pool (sl_job_submit);
 * the loop thread only copies parameters in and turns result rows into Lua tables. Policy
 * (schema, batching, what is written when) lives in lua/sluice/app/store.lua.
 *
 *   db = store.open(path)                        -- opens (creates) the file; WAL mode
 *   db:batch({ {sql, p1, p2, ...}, ... }, cb)    -- one transaction on a worker; cb(true) or
 *                                                -- cb(nil, message)
 *   db:query(sql, {p1, ...}, cb)                 -- rows on a worker; cb({ {col=v}, ... })
 *   db:query_sync(sql, {p1, ...}) -> rows        -- on the calling thread (CLI commands only)
 *   db:close()
 *   store.memory() -> used, highwater   -- SQLite's own bytes (a diagnostic)
 * Parameters are integers, floats, strings, booleans or store.NULL.
 */
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

#define DB_MT "sluice.store.db"
#define STMT_CACHE 32

typedef struct db_conn {
  sqlite3 *db;
  pthread_mutex_t mu;
  struct {
    char *sql;
    sqlite3_stmt *stmt;
  } cache[STMT_CACHE]; /* prepared statements, guarded by mu */
  int ncache;
} db_conn;

typedef struct db_t {
  db_conn writer, reader;
  atomic_int refs; /* the Lua handle plus every job in flight */
  char *path;
} db_t;

typedef struct db_ud {
  db_t *db; /* NULL once closed */
} db_ud;

/* A copied SQL value. Text owns its bytes. */
typedef struct sval {
  int type; /* SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB, SQLITE_NULL */
  union {
    sqlite3_int64 i;
    double d;
    struct {
      char *p;
      size_t n;
    } s;
  } u;
} sval;

typedef struct stmt_spec {
  char *sql;
  int shared_sql; /* sql belongs to an earlier statement of the same batch */
  int nparams;
  sval *params;
} stmt_spec;

static char null_sentinel;

/* ---- values ------------------------------------------------------------------------------ */

static void sval_free(sval *v) {
  if (v->type == SQLITE_TEXT || v->type == SQLITE_BLOB) free(v->u.s.p);
  v->type = SQLITE_NULL;
}

static char *dup_bytes(const char *p, size_t n) {
  char *c = malloc(n + 1);
  if (!c) return NULL;
  memcpy(c, p, n);
  c[n] = '\0';
  return c;
}

/* Copies the Lua value at idx into v; raises on a type SQLite cannot store. */
static void sval_from_lua(lua_State *L, int idx, sval *v, int argn) {
  switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        v->type = SQLITE_INTEGER;
        v->u.i = lua_tointeger(L, idx);
      } else {
        v->type = SQLITE_FLOAT;
        v->u.d = lua_tonumber(L, idx);
      }
      return;
    case LUA_TBOOLEAN:
      v->type = SQLITE_INTEGER;
      v->u.i = lua_toboolean(L, idx);
      return;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      v->u.s.p = dup_bytes(s, n);
      if (!v->u.s.p) luaL_error(L, "store: out of memory");
      v->u.s.n = n;
      v->type = SQLITE_TEXT;
      return;
    }
    case LUA_TNIL:
      v->type = SQLITE_NULL;
      return;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == &null_sentinel) {
        v->type = SQLITE_NULL;
        return;
      }
      /* fall through */
    default:
      luaL_error(L,
                 "bad SQL parameter #%d (number, string, boolean or store.NULL expected, got %s)",
                 argn, luaL_typename(L, idx));
  }
}

static void spec_free(stmt_spec *s) {
  if (!s->shared_sql) free(s->sql);
  for (int i = 0; i < s->nparams; i++) sval_free(&s->params[i]);
  free(s->params);
  s->sql = NULL;
  s->params = NULL;
  s->nparams = 0;
}

/* Fills spec from the SQL text at sql_idx and the parameters t[first..n] of the table at
 * tidx (tidx 0: none). n is t.n when present, else #t. Raises on bad values; on a raise the
 * spec is left for the caller's cleanup (its fields are always consistent). */
static void spec_from_lua(lua_State *L, stmt_spec *spec, int sql_idx, int tidx, int first,
                          char *shared_sql) {
  size_t n;
  const char *sql = luaL_checklstring(L, sql_idx, &n);
  if (shared_sql) {
    spec->sql = shared_sql;
    spec->shared_sql = 1;
  } else {
    spec->sql = dup_bytes(sql, n);
    if (!spec->sql) luaL_error(L, "store: out of memory");
  }
  if (tidx == 0) return;
  lua_getfield(L, tidx, "n");
  lua_Integer count =
      lua_isinteger(L, -1) ? lua_tointeger(L, -1) : (lua_Integer)lua_rawlen(L, tidx);
  lua_pop(L, 1);
  int np = (int)(count - first + 1);
  if (np <= 0) return;
  spec->params = calloc((size_t)np, sizeof *spec->params);
  if (!spec->params) luaL_error(L, "store: out of memory");
  for (int i = 0; i < np; i++) spec->params[i].type = SQLITE_NULL;
  spec->nparams = np;
  for (int i = 0; i < np; i++) {
    lua_rawgeti(L, tidx, first + i);
    sval_from_lua(L, -1, &spec->params[i], i + 1);
    lua_pop(L, 1);
  }
}

/* ---- connections ------------------------------------------------------------------------- */

static int conn_open(db_conn *c, const char *path, char *err, size_t errlen) {
  pthread_mutex_init(&c->mu, NULL);
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX;
  int rc = sqlite3_open_v2(path, &c->db, flags, NULL);
  if (rc != SQLITE_OK) {
    snprintf(err, errlen, "%s", c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
    return rc;
  }
  sqlite3_busy_timeout(c->db, 5000);
  return SQLITE_OK;
}

static void conn_close(db_conn *c) {
  for (int i = 0; i < c->ncache; i++) {
    sqlite3_finalize(c->cache[i].stmt);
    free(c->cache[i].sql);
  }
  c->ncache = 0;
  if (c->db) sqlite3_close_v2(c->db);
  c->db = NULL;
  pthread_mutex_destroy(&c->mu);
}

/* Returns a prepared statement for sql, cached on the connection (caller holds c->mu). */
static sqlite3_stmt *conn_prepare(db_conn *c, const char *sql, int *rc) {
  for (int i = 0; i < c->ncache; i++) {
    if (strcmp(c->cache[i].sql, sql) == 0) {
      sqlite3_reset(c->cache[i].stmt);
      sqlite3_clear_bindings(c->cache[i].stmt);
      *rc = SQLITE_OK;
      return c->cache[i].stmt;
    }
  }
  sqlite3_stmt *st = NULL;
  *rc = sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
  if (*rc != SQLITE_OK) return NULL;
  if (c->ncache == STMT_CACHE) { /* evict the oldest */
    sqlite3_finalize(c->cache[0].stmt);
    free(c->cache[0].sql);
    memmove(&c->cache[0], &c->cache[1], sizeof c->cache[0] * (STMT_CACHE - 1));
    c->ncache--;
  }
  c->cache[c->ncache].sql = strdup(sql);
  c->cache[c->ncache].stmt = st;
  c->ncache++;
  return st;
}

static int bind_params(sqlite3_stmt *st, const stmt_spec *s) {
  for (int i = 0; i < s->nparams; i++) {
    const sval *v = &s->params[i];
    int rc;
    switch (v->type) {
      case SQLITE_INTEGER:
        rc = sqlite3_bind_int64(st, i + 1, v->u.i);
        break;
      case SQLITE_FLOAT:
        rc = sqlite3_bind_double(st, i + 1, v->u.d);
        break;
      case SQLITE_TEXT:
        rc = sqlite3_bind_text64(st, i + 1, v->u.s.p, v->u.s.n, SQLITE_STATIC, SQLITE_UTF8);
        break;
      default:
        rc = sqlite3_bind_null(st, i + 1);
    }
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}

static void db_release(db_t *db) {
  if (atomic_fetch_sub(&db->refs, 1) != 1) return;
  conn_close(&db->writer);
  conn_close(&db->reader);
  free(db->path);
  free(db);
}

/* ---- open / close ------------------------------------------------------------------------ */

static db_t *check_db(lua_State *L) {
  db_ud *ud = luaL_checkudata(L, 1, DB_MT);
  sl_check_open(L, ud->db, "store database");
  return ud->db;
}

/* store.open(path) -> db | nil, message, code. Opens both connections, switches the file to
 * WAL mode and synchronous=NORMAL (a committed transaction survives a process crash; a power
 * loss may lose the last ones). Runs on the calling thread: it is done once per run. */
static int l_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  db_t *db = calloc(1, sizeof *db);
  if (!db) return luaL_error(L, "store: out of memory");
  atomic_init(&db->refs, 1);
  db->path = strdup(path);
  char err[512] = "";
  int rc = conn_open(&db->writer, path, err, sizeof err);
  if (rc == SQLITE_OK) {
    char *msg = NULL;
    rc = sqlite3_exec(db->writer.db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", NULL,
                      NULL, &msg);
    if (rc != SQLITE_OK) snprintf(err, sizeof err, "%s", msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
  }
  if (rc == SQLITE_OK) rc = conn_open(&db->reader, path, err, sizeof err);
  if (rc != SQLITE_OK) {
    conn_close(&db->writer);
    if (db->reader.db) conn_close(&db->reader);
    free(db->path);
    free(db);
    return sl_push_fail(L, "ESTORE", "store '%s': %s", path, err);
  }
  db_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->db = db;
  luaL_setmetatable(L, DB_MT);
  return 1;
}

static int db_gc(lua_State *L) {
  db_ud *ud = luaL_checkudata(L, 1, DB_MT);
  if (ud->db) {
    db_t *db = ud->db;
    ud->db = NULL;
    db_release(db);
  }
  return 0;
}

static int db_path(lua_State *L) {
  lua_pushstring(L, check_db(L)->path);
  return 1;
}

/* ---- batch: one write transaction on a worker -------------------------------------------- */

typedef struct batch_job {
  db_t *db;
  stmt_spec *specs;
  int n;
  int failed;
  char err[512];
} batch_job;

static void batch_free(void *data) {
  batch_job *b = data;
  for (int i = 0; i < b->n; i++) spec_free(&b->specs[i]);
  free(b->specs);
  if (b->db) db_release(b->db);
  free(b);
}

static void batch_run(sl_job *job, void *data) {
  (void)job;
  batch_job *b = data;
  db_conn *c = &b->db->writer;
  pthread_mutex_lock(&c->mu);
  char *msg = NULL;
  int rc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, &msg);
  if (rc != SQLITE_OK) {
    b->failed = 1;
    snprintf(b->err, sizeof b->err, "begin: %s", msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    pthread_mutex_unlock(&c->mu);
    return;
  }
  for (int i = 0; i < b->n && !b->failed; i++) {
    sqlite3_stmt *st = conn_prepare(c, b->specs[i].sql, &rc);
    if (st) rc = bind_params(st, &b->specs[i]);
    if (st && rc == SQLITE_OK) {
      while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      }
      if (rc == SQLITE_DONE) rc = SQLITE_OK;
    }
    if (rc != SQLITE_OK) {
      b->failed = 1;
      snprintf(b->err, sizeof b->err, "%s (in: %.120s)", sqlite3_errmsg(c->db), b->specs[i].sql);
    }
    if (st) {
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
    }
  }
  rc = sqlite3_exec(c->db, b->failed ? "ROLLBACK" : "COMMIT", NULL, NULL, NULL);
  if (rc != SQLITE_OK && !b->failed) {
    b->failed = 1;
    snprintf(b->err, sizeof b->err, "commit: %s", sqlite3_errmsg(c->db));
    sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
  }
  pthread_mutex_unlock(&c->mu);
}

static int batch_finish(lua_State *L, void *data) {
  batch_job *b = data;
  if (b->failed) return sl_push_fail(L, "ESTORE", "store write: %s", b->err);
  lua_pushboolean(L, 1);
  lua_pushinteger(L, b->n);
  return 2;
}

static const sl_job_class batch_class = {"store.batch", batch_run, batch_finish, batch_free};

/* Copies the statements (arg 2) into the batch (arg 1, light userdata); runs under a
 * protected call so a bad value frees what was copied instead of leaking it. */
static int fill_batch(lua_State *L) {
  batch_job *b = lua_touserdata(L, 1);
  int n = (int)lua_rawlen(L, 2);
  /* A batch repeats a few statements many times: the copy of each SQL text is shared by the
   * statements that name the same Lua string. */
  enum { RECENT = 8 };
  const char *recent_lua[RECENT] = {0};
  char *recent_copy[RECENT] = {0};
  int next_slot = 0;
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 2, i + 1);
    if (!lua_istable(L, -1))
      return luaL_error(L, "bad statement #%d to 'batch' (table {sql, params...} expected)", i + 1);
    lua_rawgeti(L, -1, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "bad statement #%d to 'batch' (SQL text expected first)", i + 1);
    b->n = i + 1;
    const char *lua_sql = lua_tostring(L, -1);
    char *shared = NULL;
    for (int k = 0; k < RECENT && !shared; k++)
      if (recent_lua[k] == lua_sql) shared = recent_copy[k];
    spec_from_lua(L, &b->specs[i], -1, lua_absindex(L, -2), 2, shared);
    if (!shared) {
      recent_lua[next_slot] = lua_sql;
      recent_copy[next_slot] = b->specs[i].sql;
      next_slot = (next_slot + 1) % RECENT;
    }
    lua_pop(L, 2);
  }
  return 0;
}

/* db:batch(statements, cb) -> job: statements is a list of {sql, params...} (a statement's
 * own n field counts its entries when parameters may be nil). All run in one transaction. */
static int db_batch(lua_State *L) {
  db_t *db = check_db(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  int n = (int)lua_rawlen(L, 2);
  batch_job *b = calloc(1, sizeof *b);
  if (!b) return luaL_error(L, "store: out of memory");
  b->specs = calloc(n > 0 ? (size_t)n : 1, sizeof *b->specs);
  if (!b->specs) {
    free(b);
    return luaL_error(L, "store: out of memory");
  }
  lua_pushcfunction(L, fill_batch);
  lua_pushlightuserdata(L, b);
  lua_pushvalue(L, 2);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    batch_free(b);
    return lua_error(L);
  }
  atomic_fetch_add(&db->refs, 1);
  b->db = db;
  return sl_job_submit(L, 3, &batch_class, b);
}

/* ---- query: rows on a worker --------------------------------------------------------------- */

typedef struct query_job {
  db_t *db;
  stmt_spec spec;
  int ncols;
  char **names;
  sval *cells; /* nrows * ncols */
  size_t nrows, cap;
  int failed;
  char err[512];
} query_job;

static void query_free(void *data) {
  query_job *q = data;
  spec_free(&q->spec);
  for (int i = 0; i < q->ncols; i++) free(q->names[i]);
  free(q->names);
  for (size_t i = 0; i < q->nrows * (size_t)q->ncols; i++) sval_free(&q->cells[i]);
  free(q->cells);
  if (q->db) db_release(q->db);
  free(q);
}

static void query_run(sl_job *job, void *data) {
  query_job *q = data;
  db_conn *c = &q->db->reader;
  pthread_mutex_lock(&c->mu);
  int rc;
  sqlite3_stmt *st = conn_prepare(c, q->spec.sql, &rc);
  if (st) rc = bind_params(st, &q->spec);
  if (!st || rc != SQLITE_OK) {
    q->failed = 1;
    snprintf(q->err, sizeof q->err, "%s", sqlite3_errmsg(c->db));
    if (st) sqlite3_reset(st);
    pthread_mutex_unlock(&c->mu);
    return;
  }
  q->ncols = sqlite3_column_count(st);
  q->names = calloc(q->ncols > 0 ? (size_t)q->ncols : 1, sizeof *q->names);
  for (int i = 0; q->names && i < q->ncols; i++) q->names[i] = strdup(sqlite3_column_name(st, i));
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (job && sl_job_cancelled(job)) break;
    if (q->nrows == q->cap) {
      size_t cap = q->cap ? q->cap * 2 : 16;
      sval *cells = realloc(q->cells, cap * (size_t)q->ncols * sizeof *cells);
      if (!cells) {
        rc = SQLITE_NOMEM;
        break;
      }
      q->cells = cells;
      q->cap = cap;
    }
    sval *row = q->cells + q->nrows * (size_t)q->ncols;
    for (int i = 0; i < q->ncols; i++) {
      sval *v = &row[i];
      v->type = sqlite3_column_type(st, i);
      switch (v->type) {
        case SQLITE_INTEGER:
          v->u.i = sqlite3_column_int64(st, i);
          break;
        case SQLITE_FLOAT:
          v->u.d = sqlite3_column_double(st, i);
          break;
        case SQLITE_TEXT:
        case SQLITE_BLOB: {
          const void *p = v->type == SQLITE_TEXT ? (const void *)sqlite3_column_text(st, i)
                                                 : sqlite3_column_blob(st, i);
          size_t n = (size_t)sqlite3_column_bytes(st, i);
          v->u.s.p = dup_bytes(p ? p : "", p ? n : 0);
          v->u.s.n = v->u.s.p ? n : 0;
          if (!v->u.s.p) v->type = SQLITE_NULL;
          break;
        }
        default:
          v->type = SQLITE_NULL;
      }
    }
    q->nrows++;
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    q->failed = 1;
    snprintf(q->err, sizeof q->err, "%s",
             rc == SQLITE_NOMEM ? "out of memory" : sqlite3_errmsg(c->db));
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  pthread_mutex_unlock(&c->mu);
}

static int query_finish(lua_State *L, void *data) {
  query_job *q = data;
  if (q->failed) return sl_push_fail(L, "ESTORE", "store query: %s", q->err);
  lua_createtable(L, (int)q->nrows, 0);
  for (size_t r = 0; r < q->nrows; r++) {
    lua_createtable(L, 0, q->ncols);
    sval *row = q->cells + r * (size_t)q->ncols;
    for (int i = 0; i < q->ncols; i++) {
      switch (row[i].type) {
        case SQLITE_INTEGER:
          lua_pushinteger(L, (lua_Integer)row[i].u.i);
          break;
        case SQLITE_FLOAT:
          lua_pushnumber(L, row[i].u.d);
          break;
        case SQLITE_TEXT:
        case SQLITE_BLOB:
          lua_pushlstring(L, row[i].u.s.p, row[i].u.s.n);
          break;
        default:
          continue;
      }
      lua_setfield(L, -2, q->names[i]);
    }
    lua_rawseti(L, -2, (lua_Integer)r + 1);
  }
  return 1;
}

static const sl_job_class query_class = {"store.query", query_run, query_finish, query_free};

static query_job *new_query(lua_State *L, db_t *db) {
  query_job *q = calloc(1, sizeof *q);
  if (!q) luaL_error(L, "store: out of memory");
  atomic_fetch_add(&db->refs, 1);
  q->db = db;
  return q;
}

/* Copies sql (arg 2) and params (arg 3, optional table) into q under a protected call so a
 * bad parameter frees the job instead of leaking it. */
static int fill_query(lua_State *L) {
  query_job *q = lua_touserdata(L, 1);
  spec_from_lua(L, &q->spec, 2, lua_istable(L, 3) ? 3 : 0, 1, NULL);
  return 0;
}

static void prepare_query(lua_State *L, query_job *q) {
  lua_pushcfunction(L, fill_query);
  lua_pushlightuserdata(L, q);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    query_free(q);
    lua_error(L);
  }
}

/* db:query(sql, params, cb) -> job */
static int db_query(lua_State *L) {
  db_t *db = check_db(L);
  luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  query_job *q = new_query(L, db);
  prepare_query(L, q);
  return sl_job_submit(L, 4, &query_class, q);
}

/* db:query_sync(sql, params) -> rows | nil, message: runs on the calling thread. For
 * commands that do nothing else meanwhile (sluice jobs); a running engine uses db:query. */
static int db_query_sync(lua_State *L) {
  db_t *db = check_db(L);
  luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  query_job *q = new_query(L, db);
  prepare_query(L, q);
  query_run(NULL, q);
  int n = query_finish(L, q);
  query_free(q);
  return n;
}

/* db:exec_sync(sql) -> true | nil, message: runs SQL text (several statements) on the writer
 * connection on the calling thread. Used once at open for the schema. */
static int db_exec_sync(lua_State *L) {
  db_t *db = check_db(L);
  const char *sql = luaL_checkstring(L, 2);
  pthread_mutex_lock(&db->writer.mu);
  char *msg = NULL;
  int rc = sqlite3_exec(db->writer.db, sql, NULL, NULL, &msg);
  pthread_mutex_unlock(&db->writer.mu);
  if (rc != SQLITE_OK) {
    lua_pushnil(L);
    lua_pushfstring(L, "store '%s': %s", db->path, msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    lua_pushliteral(L, "ESTORE");
    return 3;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* store.memory() -> bytes SQLite holds now (page caches, prepared statements, schemas of
 * every connection of the process), the most it held. A diagnostic (bench/live_long.sh). */
static int l_memory(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sqlite3_memory_used());
  lua_pushinteger(L, (lua_Integer)sqlite3_memory_highwater(0));
  return 2;
}

int luaopen_sluice_store(lua_State *L) {
  static const luaL_Reg methods[] = {{"batch", db_batch},
                                     {"query", db_query},
                                     {"query_sync", db_query_sync},
                                     {"exec_sync", db_exec_sync},
                                     {"path", db_path},
                                     {"close", db_gc},
                                     {NULL, NULL}};
  luaL_newmetatable(L, DB_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, db_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, db_gc);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"open", l_open}, {"memory", l_memory}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_pushlightuserdata(L, &null_sentinel);
  lua_setfield(L, -2, "NULL");
  lua_pushstring(L, sqlite3_libversion());
  lua_setfield(L, -2, "sqlite_version");
  return 1;
}
