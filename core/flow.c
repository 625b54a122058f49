/* flow.c: the stage graph's per-item fast path (module sluice.core.flow).
 *
 * lua/sluice/graph.lua runs every stage and owns every rule of the graph; this file only
 * makes its commonest case cheap. It has three parts:
 *
 *  - queue: a stage's input queue, a ring of Lua values (held in the userdata's user value
 *    table) with its indices in C, so that the runner can move an item without a Lua table
 *    field per index.
 *  - stage/source state (fs): counters that the fast path keeps in C and adds to the stage's
 *    Lua table only at "flush" points, plus a one-key cache of the per-key pending counts.
 *  - the pump: what one worker of a plain stage (no retry, timeout, limits, order, batch,
 *    collect or gate; nobody listening to per-item events; no memo) does for each queued
 *    item: run it, make the output envelope, hand it on, count. Anything else (a failure,
 *    ctx:emit, options returned by run, a full downstream queue) goes back to graph.lua
 *    with the item, which finishes it as the Lua runner always did. Source emission
 *    (ctx:emit of a function source) has the same fast path.
 *
 * Deferred counts are exact from every other task's point of view: a task that uses the fast
 * path flushes before it gives up control (its on_wait hook calls flow.on_wait or
 * flow.flush; a pump and a source emit flush before returning to Lua code that could look),
 * and job:stats() flushes every stage. Within one uninterrupted stretch of a task nobody else
 * runs, so nobody else can see the difference. Consumer increments are flushed before own
 * decrements, so a key is never closed downstream while an item of it is on its way.
 *
 * What the pump reads of other tasks' state (a consumer's waiting workers, producers waiting
 * for room, a change of workers) is cached per "epoch": sl_flow_epoch is bumped each time a
 * task is resumed (core.resume) and by flow.bump() from Lua code that changes what the cache
 * holds (workers, event listeners, stop). A pump call always starts with a fresh read.
 */
#include <math.h>
#include <string.h>

#include "sluice.h"

#define QUEUE_MT "sluice.flow.queue"
#define STATE_MT "sluice.flow.state"
#define PUMP_MT "sluice.flow.pump"

/* The metatables are also kept in the registry under these addresses: checking a userdata's
 * metatable by address is cheaper than luaL_checkudata's lookup by name, and the fast path
 * checks one or two per item. */
static const char queue_mt_key = 'q', state_mt_key = 's', pump_mt_key = 'p';

/* Returns the userdata at idx if its metatable is the one at key; raises otherwise. */
static void *check_ud(lua_State *L, int idx, const void *key, const char *tname) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_getmetatable(L, idx)) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, key);
    int ok = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (ok) return p;
  }
  luaL_typeerror(L, idx, tname);
  return NULL;
}

unsigned sl_flow_epoch = 1;

/* The Lua functions of graph.lua the fast path calls, stored once by flow.init: a table
 * in the registry under lib_key. */
static const char lib_key = 'L';
enum {
  LIB_CHECK_KEY = 1,  /* check_key(S, k): never waits */
  LIB_CHECK_FINISHED, /* check_finished(S): never waits */
  LIB_KEY_STATE,      /* key_state(S, k) -> ks */
  LIB_SIGNAL,         /* Cond.signal(cond) */
  LIB_DELIVER,        /* deliver(P, env): may wait */
  LIB_SOURCE_EMIT,    /* source_emit(N, data, opts): may wait */
  LIB_CANCELLED,      /* sched.Cancelled */
};

static void push_lib(lua_State *L, int what) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &lib_key);
  lua_rawgeti(L, -1, what);
  lua_remove(L, -2);
}

/* ---- queue ----------------------------------------------------------------------------- */

/* A FIFO of Lua values. The values live in the user value table at indices 1..size; head is
 * the index of the first one. Grows by doubling; never shrinks (a stage's queue is bounded
 * by its capacity plus its waiting workers). */
typedef struct fqueue {
  lua_Integer head, n, size;
} fqueue;

static fqueue *check_queue(lua_State *L, int idx) {
  return (fqueue *)check_ud(L, idx, &queue_mt_key, QUEUE_MT);
}

/* flow.queue() -> q */
static int l_queue(lua_State *L) {
  fqueue *q = (fqueue *)lua_newuserdatauv(L, sizeof *q, 1);
  q->head = 1;
  q->n = 0;
  q->size = 16;
  lua_createtable(L, 16, 0);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, QUEUE_MT);
  return 1;
}

/* Pushes value at vidx (absolute) onto q, whose ring table is at tidx (absolute). */
static void queue_push(lua_State *L, fqueue *q, int tidx, int vidx) {
  if (q->n == q->size) {
    /* the ring is full: the values at 1..head-1 move to size+1..size+head-1 */
    for (lua_Integer i = 1; i < q->head; i++) {
      lua_rawgeti(L, tidx, i);
      lua_rawseti(L, tidx, q->size + i);
      lua_pushnil(L);
      lua_rawseti(L, tidx, i);
    }
    q->size *= 2;
  }
  lua_Integer at = q->head + q->n;
  if (at > q->size) at -= q->size;
  lua_pushvalue(L, vidx);
  lua_rawseti(L, tidx, at);
  q->n++;
}

/* Pushes the first value of q (ring table at tidx) and removes it from q; q must not be
 * empty. */
static void queue_pop(lua_State *L, fqueue *q, int tidx) {
  lua_rawgeti(L, tidx, q->head);
  lua_pushnil(L);
  lua_rawseti(L, tidx, q->head);
  q->n--;
  if (q->n == 0)
    q->head = 1;
  else if (++q->head > q->size)
    q->head = 1;
}

/* q:push(v) */
static int l_queue_push(lua_State *L) {
  fqueue *q = check_queue(L, 1);
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  lua_getiuservalue(L, 1, 1);
  queue_push(L, q, 3, 2);
  return 0;
}

/* q:pop() -> v, or nil when empty */
static int l_queue_pop(lua_State *L) {
  fqueue *q = check_queue(L, 1);
  if (q->n == 0) return 0;
  lua_getiuservalue(L, 1, 1);
  queue_pop(L, q, 2);
  return 1;
}

/* q:len(), #q */
static int l_queue_len(lua_State *L) {
  lua_pushinteger(L, check_queue(L, 1)->n);
  return 1;
}

/* ---- stage and source state ------------------------------------------------------------- */

#define HIST_BUCKETS 1024
#define HIST_BASE 1e-5
#define ID_MAX 120         /* graph.lua: ids longer than this are hashed */
#define MAX_RESULTS 100000 /* graph.lua: results kept per stage */

enum { MODE_LUA = 0, MODE_DIRECT, MODE_SINK };

/* User values of a state userdata. */
enum {
  UV_NODE = 1,   /* the stage's (or source's) Lua table */
  UV_KEYS,       /* S.keys (stages) */
  UV_CONS,       /* the one consumer (direct mode) */
  UV_CONS_KEYS,  /* its keys */
  UV_DKEY,       /* the key the deferred per-key counts are for */
  UV_ENV_MT,     /* stages: S.lazy_mt; sources: N.env_mt */
  UV_HOPS,       /* S.hops */
  UV_HOP1,       /* S.hop1 */
  UV_RESULTS,    /* S.results (sink mode) */
  UV_SPACE,      /* S.space: producers waiting for room in S's queue */
  UV_CONS_COND,  /* the consumer's qcond: its workers (or batcher) waiting for items */
  UV_QUEUE,      /* S.q */
  UV_CONS_QUEUE, /* the consumer's q */
  UV_BUS,        /* job.bus */
  UV_SEQS,       /* sources: N.seqs */
  UV_DEFKEY,     /* sources: N.default_key */
  UV_JOB,        /* the job */
  UV_SUFFIX,     /* stages: S.suffix1, the id suffix of a 1:1 output */
  UV_COUNT = UV_SUFFIX
};

typedef struct fstate {
  int source;     /* a source (ctx:emit) rather than a stage (pump) */
  int mode;       /* MODE_*: where a fast output goes */
  int cons_batch; /* the consumer counts queued items per key (ks.inq) */
  fqueue *q;      /* S.q (stages) */
  fqueue *cq;     /* the consumer's queue (direct mode) */
  /* deferred counts, added to the Lua side by flush */
  lua_Integer n_done, n_out;
  double busy, t_last;
  int t_first_set;
  lua_Integer hist_n;
  int hist_lo, hist_hi;
  lua_Integer hist[HIST_BUCKETS];
  int has_dkey;
  lua_Integer cons_delta; /* items of dkey handed to the consumer */
  lua_Integer own_delta;  /* minus the items of dkey finished here */
  lua_Integer src_last;   /* sources: N.seqs[dkey] */
  int src_last_ok;        /* it is an integer (or absent: 0), so the fast path can count on */
  int src_last_dirty;
  /* what the fast path read of the Lua side, valid while epoch == sl_flow_epoch */
  unsigned epoch;
  int stop; /* more workers than wanted, somebody listens to events, or the source stopped */
  lua_Integer cons_cap, cons_nwait, cons_woken, space_waiters;
} fstate;

static fstate *check_state(lua_State *L, int idx) {
  return (fstate *)check_ud(L, idx, &state_mt_key, STATE_MT);
}

static lua_Integer field_int(lua_State *L, int idx, const char *k) {
  lua_getfield(L, idx, k);
  lua_Integer v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* t[k] = t[k] + d for the table at idx (absolute); returns the new value. */
static lua_Integer add_int(lua_State *L, int idx, const char *k, lua_Integer d) {
  lua_getfield(L, idx, k);
  lua_Integer v = lua_tointeger(L, -1) + d;
  lua_pop(L, 1);
  lua_pushinteger(L, v);
  lua_setfield(L, idx, k);
  return v;
}

static void add_num(lua_State *L, int idx, const char *k, double d) {
  lua_getfield(L, idx, k);
  double v = lua_tonumber(L, -1) + d;
  lua_pop(L, 1);
  lua_pushnumber(L, v);
  lua_setfield(L, idx, k);
}

/* Reads how many producers wait for room in the stage's queue (entries of S.space; some may
 * be stale, which Cond.signal skips). */
static void read_space_waiters(lua_State *L, fstate *fs, int fsidx) {
  lua_getiuservalue(L, fsidx, UV_SPACE);
  fs->space_waiters = field_int(L, -1, "tail") - field_int(L, -1, "head") + 1;
  lua_pop(L, 1);
}

/* Reads the consumer's waiting and woken workers (its qcond). */
static void read_cons_cond(lua_State *L, fstate *fs, int fsidx) {
  lua_getiuservalue(L, fsidx, UV_CONS_COND);
  fs->cons_nwait = field_int(L, -1, "nwait");
  fs->cons_woken = field_int(L, -1, "woken");
  lua_pop(L, 1);
}

/* Reads what the fast path caches of the Lua side. fsidx is the state's absolute index. */
static void refresh(lua_State *L, fstate *fs, int fsidx) {
  int top = lua_gettop(L);
  lua_getiuservalue(L, fsidx, UV_NODE);
  int node = top + 1;
  int stop;
  if (fs->source) {
    lua_getfield(L, node, "stopped");
    stop = lua_toboolean(L, -1);
    lua_pop(L, 1);
  } else {
    lua_getiuservalue(L, fsidx, UV_BUS);
    stop = field_int(L, -1, "item_listeners") > 0 ||
           field_int(L, node, "nworkers") > field_int(L, node, "target");
    read_space_waiters(L, fs, fsidx);
  }
  fs->stop = stop;
  if (fs->mode == MODE_DIRECT) {
    lua_getiuservalue(L, fsidx, UV_CONS);
    fs->cons_cap = field_int(L, -1, "cap");
    read_cons_cond(L, fs, fsidx);
  }
  lua_settop(L, top);
  fs->epoch = sl_flow_epoch;
}

/* Calls lib function what with the user value uv of the state at fsidx as its argument. */
static void call_on_uv(lua_State *L, int what, int fsidx, int uv) {
  push_lib(L, what);
  lua_getiuservalue(L, fsidx, uv);
  lua_call(L, 1, 0);
}

/* After a push into the consumer's queue: wakes one of its waiting workers unless one is on
 * its way already (what deliver_to does). */
static void wake_consumer(lua_State *L, fstate *fs, int fsidx) {
  if (fs->cons_nwait > 0 && fs->cons_woken == 0) {
    call_on_uv(L, LIB_SIGNAL, fsidx, UV_CONS_COND);
    read_cons_cond(L, fs, fsidx);
  }
}

/* Adds the deferred per-key counts for dkey to the Lua side: the consumer's first (its key
 * state is made if new), then this stage's own, which may complete the key (check_key). */
static void flush_key(lua_State *L, fstate *fs, int fsidx) {
  if (!fs->has_dkey) return;
  int top = lua_gettop(L);
  if (fs->cons_delta) {
    lua_Integer d = fs->cons_delta;
    fs->cons_delta = 0;
    lua_getiuservalue(L, fsidx, UV_CONS);
    int cons = top + 1;
    lua_getiuservalue(L, fsidx, UV_CONS_KEYS);
    lua_getiuservalue(L, fsidx, UV_DKEY);
    lua_rawget(L, -2);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      push_lib(L, LIB_KEY_STATE);
      lua_pushvalue(L, cons);
      lua_getiuservalue(L, fsidx, UV_DKEY);
      lua_call(L, 2, 1);
    }
    int ks = lua_gettop(L);
    add_int(L, ks, "pending", d);
    if (fs->cons_batch) add_int(L, ks, "inq", d);
    add_int(L, cons, "n_in", d);
    lua_settop(L, top);
  }
  if (fs->src_last_dirty) {
    fs->src_last_dirty = 0;
    lua_getiuservalue(L, fsidx, UV_SEQS);
    lua_getiuservalue(L, fsidx, UV_DKEY);
    lua_pushinteger(L, fs->src_last);
    lua_rawset(L, -3);
    lua_settop(L, top);
  }
  if (fs->own_delta) {
    lua_Integer d = fs->own_delta;
    fs->own_delta = 0;
    lua_getiuservalue(L, fsidx, UV_KEYS);
    lua_getiuservalue(L, fsidx, UV_DKEY);
    lua_rawget(L, -2);
    if (lua_istable(L, -1) && add_int(L, lua_gettop(L), "pending", d) == 0) {
      push_lib(L, LIB_CHECK_KEY);
      lua_getiuservalue(L, fsidx, UV_NODE);
      lua_getiuservalue(L, fsidx, UV_DKEY);
      lua_call(L, 2, 0);
    }
    lua_settop(L, top);
  }
}

/* Adds every deferred count to the Lua side (see the file comment). Never waits. */
static void flush(lua_State *L, fstate *fs, int fsidx) {
  int top = lua_gettop(L);
  int finished_some = fs->n_done > 0;
  if (fs->n_done || fs->n_out || fs->hist_n || fs->busy != 0) {
    lua_getiuservalue(L, fsidx, UV_NODE);
    int node = top + 1;
    if (fs->n_out) add_int(L, node, "n_out", fs->n_out);
    if (fs->n_done) add_int(L, node, "n_done", fs->n_done);
    if (fs->busy != 0) add_num(L, node, "busy", fs->busy);
    if (fs->hist_n) {
      lua_getfield(L, node, "hist");
      int h = lua_gettop(L);
      for (int b = fs->hist_lo; b <= fs->hist_hi; b++) {
        if (!fs->hist[b]) continue;
        lua_rawgeti(L, h, b);
        lua_Integer v = lua_tointeger(L, -1) + fs->hist[b];
        lua_pop(L, 1);
        lua_pushinteger(L, v);
        lua_rawseti(L, h, b);
        fs->hist[b] = 0;
      }
      add_int(L, h, "n", fs->hist_n);
      fs->hist_n = 0;
      fs->hist_lo = HIST_BUCKETS;
      fs->hist_hi = -1;
    }
    if (fs->t_last > 0) {
      lua_pushnumber(L, fs->t_last);
      lua_setfield(L, node, "t_last");
    }
    fs->n_out = fs->n_done = 0;
    fs->busy = 0;
    lua_settop(L, top);
  }
  flush_key(L, fs, fsidx);
  if (finished_some && !fs->source) {
    lua_getiuservalue(L, fsidx, UV_NODE);
    lua_getfield(L, -1, "all_up");
    int all_up = lua_toboolean(L, -1);
    lua_settop(L, top);
    if (all_up) call_on_uv(L, LIB_CHECK_FINISHED, fsidx, UV_NODE);
  }
}

/* Makes key (at absolute index kidx) the one the deferred per-key counts are for, flushing
 * those of the previous key. */
static void set_dkey(lua_State *L, fstate *fs, int fsidx, int kidx) {
  if (fs->has_dkey) {
    lua_getiuservalue(L, fsidx, UV_DKEY);
    int same = lua_rawequal(L, -1, kidx);
    lua_pop(L, 1);
    if (same) return;
    flush_key(L, fs, fsidx);
  }
  lua_pushvalue(L, kidx);
  lua_setiuservalue(L, fsidx, UV_DKEY);
  fs->has_dkey = 1;
  if (fs->source) {
    lua_getiuservalue(L, fsidx, UV_SEQS);
    lua_pushvalue(L, kidx);
    lua_rawget(L, -2);
    fs->src_last_ok = lua_isnil(L, -1) || lua_isinteger(L, -1);
    fs->src_last = lua_tointeger(L, -1); /* 0 when absent */
    lua_pop(L, 2);
  }
}

/* flow.state(node, opts) -> fs. node: the stage's (or source's) table, set up by
 * Pipeline:start. opts.source: a source; opts.mode: "direct" (one plain consumer whose queue
 * takes the outputs), "sink" (outputs go to node.results), or nil (outputs go through Lua);
 * opts.job. */
static int l_state(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  fstate *fs = (fstate *)lua_newuserdatauv(L, sizeof *fs, UV_COUNT);
  memset(fs, 0, sizeof *fs);
  int fsidx = 3;
  luaL_setmetatable(L, STATE_MT);
  fs->hist_lo = HIST_BUCKETS;
  fs->hist_hi = -1;
  lua_getfield(L, 2, "source");
  fs->source = lua_toboolean(L, -1);
  lua_getfield(L, 2, "mode");
  const char *mode = lua_tostring(L, -1);
  fs->mode = !mode                         ? MODE_LUA
             : strcmp(mode, "direct") == 0 ? MODE_DIRECT
             : strcmp(mode, "sink") == 0   ? MODE_SINK
                                           : MODE_LUA;
  lua_pop(L, 2);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, fsidx, UV_NODE);
  lua_getfield(L, 2, "job");
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, fsidx, UV_JOB);
  lua_getfield(L, -1, "bus");
  lua_setiuservalue(L, fsidx, UV_BUS);
  lua_pop(L, 1);
  static const struct {
    int uv;
    const char *field;
  } node_fields[] = {{UV_KEYS, "keys"},          {UV_HOPS, "hops"},     {UV_HOP1, "hop1"},
                     {UV_RESULTS, "results"},    {UV_SPACE, "space"},   {UV_SEQS, "seqs"},
                     {UV_DEFKEY, "default_key"}, {UV_SUFFIX, "suffix1"}};
  for (size_t i = 0; i < sizeof node_fields / sizeof node_fields[0]; i++) {
    lua_getfield(L, 1, node_fields[i].field);
    lua_setiuservalue(L, fsidx, node_fields[i].uv);
  }
  lua_getfield(L, 1, fs->source ? "env_mt" : "lazy_mt");
  lua_setiuservalue(L, fsidx, UV_ENV_MT);
  if (!fs->source) {
    lua_getfield(L, 1, "q");
    fs->q = check_queue(L, -1);
    lua_setiuservalue(L, fsidx, UV_QUEUE);
  }
  if (fs->mode == MODE_DIRECT) {
    lua_getfield(L, 1, "consumer1");
    int cons = lua_gettop(L);
    luaL_argcheck(L, lua_istable(L, cons), 1, "direct mode needs node.consumer1");
    lua_getfield(L, cons, "keys");
    lua_setiuservalue(L, fsidx, UV_CONS_KEYS);
    lua_getfield(L, cons, "qcond");
    lua_setiuservalue(L, fsidx, UV_CONS_COND);
    lua_getfield(L, cons, "q");
    fs->cq = check_queue(L, -1);
    lua_setiuservalue(L, fsidx, UV_CONS_QUEUE);
    lua_getfield(L, cons, "batch");
    fs->cons_batch = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_setiuservalue(L, fsidx, UV_CONS);
  }
  lua_settop(L, fsidx);
  return 1;
}

/* flow.flush(fs) */
static int l_flush(lua_State *L) {
  fstate *fs = check_state(L, 1);
  lua_settop(L, 1);
  flush(L, fs, 1);
  return 0;
}

/* flow.bump(): what the fast path cached of the Lua side may have changed. */
static int l_bump(lua_State *L) {
  (void)L;
  sl_flow_epoch++;
  return 0;
}

/* ---- the pump --------------------------------------------------------------------------- */

/* One per worker of a plain stage. */
enum { PUV_STATE = 1, PUV_UNIT, PUV_CTX, PUV_RUN, PUV_ERRH, PUV_ENV, PUV_COUNT = PUV_ENV };
typedef struct fpump {
  double t;          /* when the worker's previous item ended */
  int has_t;         /* t is set (within one stretch of queued items) */
  int in_item;       /* run is running */
  int touched;       /* Lua code asked for the item (ctx:emit, ctx:event) */
  int running_added; /* S.running counts the item */
  double t_item;     /* when the current item started */
} fpump;

static fpump *check_pump(lua_State *L, int idx) {
  return (fpump *)check_ud(L, idx, &pump_mt_key, PUMP_MT);
}

/* flow.pump_new(fs, u, ctx, run, on_error) -> P */
static int l_pump_new(lua_State *L) {
  check_state(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checkany(L, 4);
  luaL_checktype(L, 5, LUA_TFUNCTION);
  fpump *P = (fpump *)lua_newuserdatauv(L, sizeof *P, PUV_COUNT);
  memset(P, 0, sizeof *P);
  luaL_setmetatable(L, PUMP_MT);
  for (int i = 1; i <= 5; i++) {
    lua_pushvalue(L, i);
    lua_setiuservalue(L, -2, i);
  }
  return 1;
}

/* Stack slots of a flow.pump call. */
enum {
  A_P = 1,  /* the pump */
  A_T,      /* the time argument */
  S_FS,     /* its state */
  S_RING,   /* S.q's ring table */
  S_CRING,  /* the consumer queue's ring table (direct mode) or nil */
  S_RUN,    /* S.run */
  S_CTX,    /* the worker's ctx */
  S_ERRH,   /* the error handler */
  S_ENV_MT, /* S.lazy_mt */
  S_HOPS,   /* S.hops */
  S_KDATA,  /* the strings "data", "key", "_o", "_t": field names for raw access */
  S_KKEY,
  S_KO,
  S_KT,
  S_ENV, /* the current item's envelope */
  S_KEY, /* its key */
  S_BASE = S_KEY
};

/* S.running += d */
static void add_running(lua_State *L, int fsidx, lua_Integer d) {
  lua_getiuservalue(L, fsidx, UV_NODE);
  add_int(L, lua_gettop(L), "running", d);
  lua_pop(L, 1);
}

/* The item is handed back to Lua: S.running counts it and nothing is deferred. */
static void hand_back(lua_State *L, fpump *P, fstate *fs) {
  if (!P->running_added) add_running(L, S_FS, 1);
  P->running_added = 0;
  P->in_item = 0;
  flush(L, fs, S_FS);
}

static void hist_add(fstate *fs, double v) {
  int b;
  if (v <= HIST_BASE) {
    b = 0;
  } else {
    static double inv = 0;
    if (inv == 0) inv = 1 / log(1.05);
    double x = floor(log(v / HIST_BASE) * inv) + 1;
    b = x >= HIST_BUCKETS - 1 ? HIST_BUCKETS - 1 : (int)x;
  }
  fs->hist[b]++;
  fs->hist_n++;
  if (b < fs->hist_lo) fs->hist_lo = b;
  if (b > fs->hist_hi) fs->hist_hi = b;
}

/* Whether an envelope whose data is v (at idx) may be the origin of its outputs: holding it
 * then holds its data for as long as they live, which is harmless for small values only. */
static int small_data(lua_State *L, int idx) {
  switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
    case LUA_TBOOLEAN:
      return 1;
    case LUA_TSTRING:
      return lua_rawlen(L, idx) <= 256;
    default:
      return 0;
  }
}

/* Makes the output envelope of a 1:1 item with data at vidx, as graph.lua's lazy envelopes:
 * { data, key, _o = origin, _t = hop }. The origin of a lazy input is its own; an envelope
 * made in full with small data is its outputs' origin itself (lazy_env_mt reads id, seq, t0
 * and t1 from it); otherwise an origin { id, seq, t0, t1 } is made. Pushes it. */
static void push_output(lua_State *L, int vidx) {
  int out = lua_gettop(L) + 1;
  lua_createtable(L, 0, 4);
  lua_pushvalue(L, S_KDATA);
  lua_pushvalue(L, vidx);
  lua_rawset(L, out);
  lua_pushvalue(L, S_KKEY);
  lua_pushvalue(L, S_KEY);
  lua_rawset(L, out);
  lua_pushvalue(L, S_KO);
  if (lua_rawget(L, S_ENV) != LUA_TNIL) { /* out+1: the origin */
    lua_pushvalue(L, S_KO);
    lua_pushvalue(L, out + 1);
    lua_rawset(L, out);
    lua_pushvalue(L, S_KT);
    lua_rawget(L, S_ENV); /* out+2: the chain of hops */
    lua_pushvalue(L, out + 2);
    if (lua_rawget(L, S_HOPS) == LUA_TNIL) { /* out+3: this stage's hop after it */
      lua_pop(L, 1);
      lua_createtable(L, 0, 2);
      lua_pushvalue(L, out + 2);
      lua_setfield(L, out + 3, "prev");
      lua_getiuservalue(L, S_FS, UV_SUFFIX);
      lua_setfield(L, out + 3, "sfx");
      lua_pushvalue(L, out + 2);
      lua_pushvalue(L, out + 3);
      lua_rawset(L, S_HOPS); /* hops[chain] = hop */
    }
    lua_pushvalue(L, S_KT);
    lua_pushvalue(L, out + 3);
    lua_rawset(L, out);
  } else {
    lua_pop(L, 1);
    lua_pushvalue(L, S_KDATA);
    lua_rawget(L, S_ENV);
    int small = small_data(L, -1);
    lua_pop(L, 1);
    lua_pushvalue(L, S_KO);
    if (small) {
      lua_pushvalue(L, S_ENV);
    } else {
      lua_createtable(L, 0, 4);
      int o = lua_gettop(L);
      lua_getfield(L, S_ENV, "id");
      lua_setfield(L, o, "id");
      lua_getfield(L, S_ENV, "seq");
      lua_setfield(L, o, "seq");
      lua_getfield(L, S_ENV, "t0");
      lua_setfield(L, o, "t0");
      lua_getfield(L, S_ENV, "t1");
      lua_setfield(L, o, "t1");
    }
    lua_rawset(L, out);
    lua_pushvalue(L, S_KT);
    lua_getiuservalue(L, S_FS, UV_HOP1);
    lua_rawset(L, out);
  }
  lua_settop(L, out);
  lua_pushvalue(L, S_ENV_MT);
  lua_setmetatable(L, out);
}

static int pump_k(lua_State *L, int status, lua_KContext kc);

/* Sets what push_output needs of the state at S_FS into S_ENV_MT .. S_KT. */
static void set_output_slots(lua_State *L) {
  lua_getiuservalue(L, S_FS, UV_ENV_MT);
  lua_replace(L, S_ENV_MT);
  lua_getiuservalue(L, S_FS, UV_HOPS);
  lua_replace(L, S_HOPS);
  static const char *const names[] = {"data", "key", "_o", "_t"};
  for (int i = 0; i < 4; i++) {
    lua_pushstring(L, names[i]);
    lua_replace(L, S_KDATA + i);
  }
}

/* Returns st, env, key, t_item, ok, v, e2, code to Lua (see l_pump). Expects ok, v, e2, code
 * at the top. */
static int return_item(lua_State *L, fpump *P, int st) {
  int top = lua_gettop(L);
  lua_pushinteger(L, st);
  lua_pushvalue(L, S_ENV);
  lua_pushvalue(L, S_KEY);
  lua_pushnumber(L, P->t_item);
  for (int i = top - 3; i <= top; i++) lua_pushvalue(L, i);
  return 8;
}

/* What the pump does after run returned (status LUA_OK, or LUA_YIELD when it had waited) or
 * raised. Returns the number of results for l_pump to return, or -1 to go on with the next
 * item. */
static int after_run(lua_State *L, fpump *P, fstate *fs, int status) {
  if (P->running_added) {
    add_running(L, S_FS, -1);
    P->running_added = 0;
  }
  if (status == LUA_YIELD) {
    /* it waited: other workers of the stage may have changed what is cached */
    refresh(L, fs, S_FS);
    set_dkey(L, fs, S_FS, S_KEY);
  }
  if (status != LUA_OK && status != LUA_YIELD) {
    /* run raised: false, err */
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    lua_pushnil(L);
    lua_pushnil(L);
    hand_back(L, P, fs);
    return return_item(L, P, 1);
  }
  int v = lua_gettop(L) - 2, e2 = v + 1;
  int plain = !P->touched && fs->mode != MODE_LUA &&
              (lua_isnil(L, e2) || (!lua_isnil(L, v) && lua_type(L, e2) != LUA_TTABLE));
  if (!plain) {
    lua_pushboolean(L, 1);
    lua_insert(L, v);
    hand_back(L, P, fs);
    return return_item(L, P, 1);
  }
  if (!lua_isnil(L, v)) {
    push_output(L, v);
    int out = lua_gettop(L);
    if (fs->mode == MODE_SINK) {
      lua_getiuservalue(L, S_FS, UV_RESULTS);
      lua_Unsigned n = lua_rawlen(L, -1);
      if (n < MAX_RESULTS) {
        lua_pushvalue(L, out);
        lua_rawseti(L, -2, (lua_Integer)n + 1);
      } else {
        lua_getiuservalue(L, S_FS, UV_JOB);
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "results_truncated");
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    } else if (fs->cq->n < fs->cons_cap + fs->cons_nwait) {
      queue_push(L, fs->cq, S_CRING, out);
      fs->cons_delta++;
      wake_consumer(L, fs, S_FS);
    } else {
      /* the consumer's queue is full: Lua delivers it (and waits) */
      lua_pushboolean(L, 1);
      lua_insert(L, out);
      lua_pushnil(L);
      lua_pushnil(L);
      hand_back(L, P, fs);
      return return_item(L, P, 2);
    }
    fs->n_out++;
  }
  fs->n_done++;
  double t_end = sl_now();
  double busy = t_end - P->t_item;
  fs->busy += busy;
  hist_add(fs, busy);
  fs->t_last = t_end;
  fs->own_delta--;
  P->t = t_end;
  P->in_item = 0;
  lua_settop(L, S_BASE);
  return -1;
}

/* The pump's loop: takes queued items one after the other until there are none, the worker
 * must stop, or an item needs Lua. Also the continuation of run's protected call (kc 1). */
static int pump_k(lua_State *L, int status, lua_KContext kc) {
  fpump *P = (fpump *)lua_touserdata(L, A_P);
  fstate *fs = (fstate *)lua_touserdata(L, S_FS);
  if (kc == 1) {
    int r = after_run(L, P, fs, status);
    if (r >= 0) return r;
  }
  for (;;) {
    if (fs->epoch != sl_flow_epoch) refresh(L, fs, S_FS);
    if (fs->stop || fs->q->n == 0) {
      flush(L, fs, S_FS);
      lua_pushnil(L);
      lua_setiuservalue(L, A_P, PUV_ENV);
      return 0;
    }
    queue_pop(L, fs->q, S_RING);
    lua_replace(L, S_ENV);
    if (fs->space_waiters > 0) {
      /* a producer waits for room: wake one (as next_unit and the Lua fast path do) */
      call_on_uv(L, LIB_SIGNAL, S_FS, UV_SPACE);
      read_space_waiters(L, fs, S_FS);
    }
    lua_pushvalue(L, S_KKEY);
    lua_rawget(L, S_ENV);
    lua_replace(L, S_KEY);
    set_dkey(L, fs, S_FS, S_KEY);
    if (!P->has_t) {
      P->t = sl_now();
      P->has_t = 1;
      if (!fs->t_first_set) {
        fs->t_first_set = 1;
        lua_getiuservalue(L, S_FS, UV_NODE);
        if (lua_getfield(L, -1, "t_first") == LUA_TNIL) {
          lua_pushnumber(L, P->t);
          lua_setfield(L, -3, "t_first");
        }
        lua_pop(L, 2);
      }
    }
    lua_pushvalue(L, S_ENV);
    lua_setiuservalue(L, A_P, PUV_ENV);
    P->t_item = P->t;
    P->in_item = 1;
    P->touched = 0;
    P->running_added = 0;
    lua_pushvalue(L, S_RUN);
    lua_pushvalue(L, S_ENV);
    lua_pushvalue(L, S_CTX);
    int st = lua_pcallk(L, 2, 3, S_ERRH, 1, pump_k);
    int r = after_run(L, P, fs, st);
    if (r >= 0) return r;
  }
}

/* flow.pump(P[, t]) -> nothing, when no queued item is left for the fast path (or the worker
 * must stop); or st, env, key, t_item, ok, v, e2, code for an item that Lua must finish:
 * st 1: run's outcome as xpcall gives it (ok, v, e2, code); st 2: ok is true and v is the
 * output envelope made, which Lua delivers (the consumer's queue is full). S.running counts
 * such an item, and nothing is deferred. t: when the worker's previous item ended (nil: the
 * clock is read at the first item). */
static int l_pump(lua_State *L) {
  fpump *P = check_pump(L, 1);
  if (P->in_item) return luaL_error(L, "flow.pump: the worker is inside an item already");
  if (lua_isnoneornil(L, 2)) {
    P->has_t = 0;
  } else {
    P->t = luaL_checknumber(L, 2);
    P->has_t = 1;
  }
  lua_settop(L, 2);
  lua_getiuservalue(L, A_P, PUV_STATE); /* S_FS */
  fstate *fs = (fstate *)lua_touserdata(L, S_FS);
  lua_getiuservalue(L, S_FS, UV_QUEUE);
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2); /* S_RING */
  if (fs->mode == MODE_DIRECT) {
    lua_getiuservalue(L, S_FS, UV_CONS_QUEUE);
    lua_getiuservalue(L, -1, 1);
    lua_remove(L, -2);
  } else {
    lua_pushnil(L);
  }                                    /* S_CRING */
  lua_getiuservalue(L, A_P, PUV_RUN);  /* S_RUN */
  lua_getiuservalue(L, A_P, PUV_CTX);  /* S_CTX */
  lua_getiuservalue(L, A_P, PUV_ERRH); /* S_ERRH */
  lua_settop(L, S_KEY);                /* S_ENV_MT .. S_KEY */
  set_output_slots(L);
  refresh(L, fs, S_FS);
  return pump_k(L, LUA_OK, 0);
}

/* flow.output(fs, env, key, v) -> the lazy output envelope that stage fs makes of its item env
 * (of key key) with data v: what the pump hands on (graph.lua's finish_item uses it too). */
static int l_output(lua_State *L) {
  check_state(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checkany(L, 4);
  lua_settop(L, 4);
  /* the stack of a pump call, where push_output looks: S_FS, S_ENV_MT .. S_KT, S_ENV, S_KEY
   * (the other slots are not used); v above them */
  lua_settop(L, S_KEY);
  lua_pushvalue(L, 4);
  int v = lua_gettop(L);
  lua_pushvalue(L, 2);
  lua_replace(L, S_ENV);
  lua_pushvalue(L, 3);
  lua_replace(L, S_KEY);
  lua_pushvalue(L, 1);
  lua_replace(L, S_FS);
  set_output_slots(L);
  push_output(L, v);
  return 1;
}

/* Called when Lua code looks at the worker's item, or the worker waits inside run: S.running
 * counts the item from here, and nothing is deferred. */
static void expose_item(lua_State *L, fpump *P, int pidx) {
  lua_getiuservalue(L, pidx, PUV_STATE);
  int fsidx = lua_gettop(L);
  fstate *fs = (fstate *)lua_touserdata(L, fsidx);
  if (P->in_item && !P->running_added) {
    add_running(L, fsidx, 1);
    P->running_added = 1;
  }
  flush(L, fs, fsidx);
  lua_pop(L, 1);
}

/* flow.current(P) -> env, first: the item the worker's run is running (nothing when it is not
 * inside an item), for ctx:emit and ctx:event. Marks the item as one Lua finishes; first is
 * true the first time for the item. */
static int l_current(lua_State *L) {
  fpump *P = check_pump(L, 1);
  if (!P->in_item) return 0;
  lua_settop(L, 1);
  expose_item(L, P, 1);
  int first = !P->touched;
  P->touched = 1;
  lua_getiuservalue(L, 1, PUV_ENV);
  lua_pushboolean(L, first);
  return 2;
}

/* flow.on_wait(P): the worker is about to wait (its task's on_wait hook). Flushes the stage's
 * deferred counts; inside run, S.running counts the item while it waits. (What other tasks
 * then change is reread: they run, and this one runs again, only through core.resume, which
 * moves the epoch on.) */
static int l_on_wait(lua_State *L) {
  fpump *P = check_pump(L, 1);
  lua_settop(L, 1);
  expose_item(L, P, 1);
  return 0;
}

/* ---- source emission -------------------------------------------------------------------- */

static int emit_k(lua_State *L, int status, lua_KContext kc) {
  (void)L;
  (void)status;
  (void)kc;
  return 0;
}

static void raise_at_caller(lua_State *L, const char *msg) {
  luaL_where(L, 2);
  lua_pushstring(L, msg);
  lua_concat(L, 2);
  lua_error(L);
}

/* Upvalues of flow.source_emit: field names for raw access. */
enum { U_KEY = 1, U_SEQ, U_T0, U_T1, U_DATA, U_FS, U_COUNT = U_FS };

/* ctx:emit(data[, opts]) of a function source (SourceCtx.emit). ctx._fs is the source's
 * state. The common case (a string key, an integer or no seq, one plain consumer with room)
 * is done here: the envelope is { key, seq, data[, t0, t1] } and its id is made by its
 * metatable when read (graph.lua's source_env_mt). The rest is done by graph.lua's
 * source_emit. */
static int l_source_emit(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_isnoneornil(L, 2)) raise_at_caller(L, "ctx:emit: data must not be nil");
  int has_opts = !lua_isnoneornil(L, 3);
  if (has_opts && !lua_istable(L, 3))
    raise_at_caller(L, "ctx:emit: options must be a table {seq=, t0=, t1=, key=}");
  lua_settop(L, 3);
  lua_pushvalue(L, lua_upvalueindex(U_FS));
  lua_rawget(L, 1);
  fstate *fs = check_state(L, 4);
  if (fs->epoch != sl_flow_epoch) refresh(L, fs, 4);
  if (fs->stop) { /* the job is stopping: the source ends here */
    push_lib(L, LIB_CANCELLED);
    return lua_error(L);
  }
  /* 5 key, 6 seq, 7 t0, 8 t1 */
  if (has_opts) {
    int raw = !lua_getmetatable(L, 3);
    if (!raw) lua_pop(L, 1);
    for (int u = U_KEY; u <= U_T1; u++) {
      lua_pushvalue(L, lua_upvalueindex(u));
      if (raw)
        lua_rawget(L, 3);
      else
        lua_gettable(L, 3);
    }
  } else {
    lua_settop(L, 8);
  }
  if (lua_isnil(L, 5)) {
    lua_getiuservalue(L, 4, UV_DEFKEY);
    lua_replace(L, 5);
  }
  int fast = fs->mode == MODE_DIRECT && lua_type(L, 5) == LUA_TSTRING &&
             (lua_isnil(L, 6) || lua_isinteger(L, 6));
  if (fast) {
    set_dkey(L, fs, 4, 5);
    fast = fs->src_last_ok; /* a float seq counted so far: Lua counts on from it */
  }
  if (!fast) {
    /* graph.lua's source_emit does the rest (and may wait); it may change N.seqs[key] */
    flush(L, fs, 4);
    fs->has_dkey = 0;
    push_lib(L, LIB_SOURCE_EMIT);
    lua_getiuservalue(L, 4, UV_NODE);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_callk(L, 3, 0, 0, emit_k);
    return 0;
  }
  lua_Integer seq = lua_isnil(L, 6) ? fs->src_last + 1 : lua_tointeger(L, 6);
  if (fs->src_last < seq) {
    fs->src_last = seq;
    fs->src_last_dirty = 1;
  }
  int with_t = !lua_isnil(L, 7) || !lua_isnil(L, 8);
  lua_createtable(L, 0, with_t ? 5 : 3);
  int env = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(U_KEY));
  lua_pushvalue(L, 5);
  lua_rawset(L, env);
  lua_pushvalue(L, lua_upvalueindex(U_SEQ));
  lua_pushinteger(L, seq);
  lua_rawset(L, env);
  lua_pushvalue(L, lua_upvalueindex(U_DATA));
  lua_pushvalue(L, 2);
  lua_rawset(L, env);
  if (with_t) {
    lua_pushvalue(L, lua_upvalueindex(U_T0));
    lua_pushvalue(L, 7);
    lua_rawset(L, env);
    lua_pushvalue(L, lua_upvalueindex(U_T1));
    lua_pushvalue(L, 8);
    lua_rawset(L, env);
  }
  lua_getiuservalue(L, 4, UV_ENV_MT);
  lua_setmetatable(L, env);
  if (fs->cq->n < fs->cons_cap + fs->cons_nwait) {
    lua_getiuservalue(L, 4, UV_CONS_QUEUE);
    lua_getiuservalue(L, -1, 1);
    queue_push(L, fs->cq, lua_gettop(L), env);
    lua_settop(L, env);
    fs->cons_delta++;
    fs->n_out++;
    wake_consumer(L, fs, 4);
    return 0;
  }
  /* the consumer's queue is full: deliver waits for room */
  flush(L, fs, 4);
  push_lib(L, LIB_DELIVER);
  lua_getiuservalue(L, 4, UV_NODE);
  lua_pushvalue(L, env);
  lua_callk(L, 2, 0, 0, emit_k);
  return 0;
}

/* flow.init{check_key=, check_finished=, key_state=, signal=, deliver=, source_emit=,
 * cancelled=}: the graph functions the fast path calls. */
static int l_init(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  static const char *const names[] = {"check_key", "check_finished", "key_state", "signal",
                                      "deliver",   "source_emit",    "cancelled"};
  lua_createtable(L, 7, 0);
  for (int i = 0; i < 7; i++) {
    lua_getfield(L, 1, names[i]);
    if (lua_isnil(L, -1)) return luaL_error(L, "flow.init: '%s' is missing", names[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &lib_key);
  return 0;
}

int luaopen_sluice_flow(lua_State *L) {
  static const luaL_Reg queue_methods[] = {
      {"push", l_queue_push}, {"pop", l_queue_pop}, {"len", l_queue_len}, {NULL, NULL}};
  luaL_newmetatable(L, QUEUE_MT);
  luaL_newlib(L, queue_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_queue_len);
  lua_setfield(L, -2, "__len");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &queue_mt_key);
  luaL_newmetatable(L, STATE_MT);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &state_mt_key);
  luaL_newmetatable(L, PUMP_MT);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &pump_mt_key);
  static const luaL_Reg funcs[] = {
      {"init", l_init},       {"queue", l_queue},       {"state", l_state}, {"flush", l_flush},
      {"bump", l_bump},       {"pump_new", l_pump_new}, {"pump", l_pump},   {"current", l_current},
      {"on_wait", l_on_wait}, {"output", l_output},     {NULL, NULL}};
  luaL_newlib(L, funcs);
  static const char *const emit_fields[] = {"key", "seq", "t0", "t1", "data", "_fs"};
  for (int i = 0; i < U_COUNT; i++) lua_pushstring(L, emit_fields[i]);
  lua_pushcclosure(L, l_source_emit, U_COUNT);
  lua_setfield(L, -2, "source_emit");
  return 1;
}
