/* pool.c: jobs on the engine's worker threads, as Lua sees them (module sluice.core.pool).
 *
 * sl_job_submit (sluice.h) wraps a C module's job class in an sl_work for threads.c and
 * hands the result to a Lua callback on the loop thread; the job handle it returns lets Lua
 * cancel the job. threads.c knows nothing of Lua; this file is the one place where its work
 * meets the Lua state. Also the module's own functions: pool.size() and pool.work_sleep().
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sluice.h"
#include "threads.h"

#define JOB_HANDLE "sluice.job"

typedef struct job_handle {
  sl_job *job; /* NULL once the job has completed */
} job_handle;

struct sl_job {
  sl_work work; /* first: threads.c hands it back */
  const sl_job_class *cls;
  void *data;
  int callback_ref;
  int handle_ref; /* keeps the Lua handle alive while the job is in flight */
  job_handle *handle;
};

int sl_job_cancelled(const sl_job *job) { return sl_work_cancelled(&job->work); }

int sl_pool_size(void) { return sl_threads_size(); }

static void free_job(sl_job *job) {
  if (job->cls->free) job->cls->free(job->data);
  free(job);
}

static void job_run(sl_work *w) {
  sl_job *job = (sl_job *)w;
  job->cls->run(job, job->data);
}

/* Loop thread: the job is done (or cancelled); its Lua callback gets finish's values or
 * nil, "<name>: cancelled", "ECANCELED". */
static void job_done(sl_work *w, int how) {
  sl_job *job = (sl_job *)w;
  lua_State *L = sl_main_state();
  if (job->handle) job->handle->job = NULL;
  if (!L) { /* the state is gone: its references went with it */
    free_job(job);
    return;
  }
  sl_unref(L, &job->handle_ref);
  sl_push_ref(L, job->callback_ref);
  sl_unref(L, &job->callback_ref);
  int n;
  if (how == SL_WORK_CANCELLED) {
    n = sl_push_fail(L, "ECANCELED", "%s: cancelled", job->cls->name);
  } else {
    n = job->cls->finish(L, job->data);
  }
  free_job(job);
  sl_call(L, n, 0); /* errors are reported by sl_call; the next job still completes */
}

/* At shutdown: the job never completes; its Lua references die with the state. */
static void job_drop(sl_work *w) {
  sl_job *job = (sl_job *)w;
  if (job->handle) job->handle->job = NULL; /* job:cancel() during lua_close is a no-op */
  free_job(job);
}

static job_handle *check_handle(lua_State *L) { return luaL_checkudata(L, 1, JOB_HANDLE); }

/* job:cancel(): marks the job cancelled. A job still queued completes at once (on the next
 * loop iteration); a running one completes when its run function returns. */
static int job_cancel(lua_State *L) {
  job_handle *h = check_handle(L);
  if (h->job) sl_threads_cancel(&h->job->work);
  return 0;
}

static int job_active(lua_State *L) {
  lua_pushboolean(L, check_handle(L)->job != NULL);
  return 1;
}

static int job_tostring(lua_State *L) {
  job_handle *h = check_handle(L);
  lua_pushfstring(L, "sluice.job (%s)", h->job ? h->job->cls->name : "done");
  return 1;
}

/* Pushes a job handle that has no job yet (cancel and tostring see a finished job). */
static int new_handle(lua_State *L) {
  job_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->job = NULL;
  if (luaL_newmetatable(L, JOB_HANDLE)) {
    static const luaL_Reg methods[] = {
        {"cancel", job_cancel}, {"active", job_active}, {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, job_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_setmetatable(L, -2);
  return 1;
}

static int submit(lua_State *L, int callback_idx, const sl_job_class *cls, void *data, int cpu) {
  callback_idx = lua_absindex(L, callback_idx);
  if (lua_type(L, callback_idx) != LUA_TFUNCTION || sl_main_state() == NULL) {
    /* data is ours from here on, whatever happens */
    if (cls->free) cls->free(data);
    if (sl_main_state() == NULL) return luaL_error(L, "%s: the engine is shutting down", cls->name);
    return luaL_typeerror(L, callback_idx, "function");
  }
  /* The handle first, so that data is the only thing an error (out of memory) could strand
   * before the job owns it: the protected call below frees it then. */
  lua_pushcfunction(L, new_handle);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    if (cls->free) cls->free(data);
    return lua_error(L);
  }
  job_handle *h = lua_touserdata(L, -1);
  sl_job *job = calloc(1, sizeof *job);
  if (!job) {
    if (cls->free) cls->free(data);
    return luaL_error(L, "%s: out of memory", cls->name);
  }
  job->cls = cls;
  job->data = data;
  job->callback_ref = LUA_NOREF;
  job->handle_ref = LUA_NOREF;
  job->work.run = job_run;
  job->work.done = job_done;
  job->work.drop = job_drop;
  job->work.cpu = cpu;
  int rc = sl_threads_submit(sl_loop(L), &job->work);
  if (rc != 0) {
    free_job(job);
    return luaL_error(L, "%s: cannot start worker threads: %s", cls->name, uv_strerror(rc));
  }
  h->job = job;
  job->handle = h;
  job->handle_ref = sl_ref(L, -1);
  job->callback_ref = sl_ref(L, callback_idx);
  return 1;
}

int sl_job_submit(lua_State *L, int callback_idx, const sl_job_class *cls, void *data) {
  return submit(L, callback_idx, cls, data, 0);
}

int sl_job_submit_cpu(lua_State *L, int callback_idx, const sl_job_class *cls, void *data) {
  return submit(L, callback_idx, cls, data, 1);
}

/* ---- CPU leases ---------------------------------------------------------------------- */

/* A lease of one CPU token for work outside the pool (threads.h, sl_threads_release). The
 * handle is Lua's; the lease itself is malloc'd, because threads.c may hold it past the
 * state's end (the drop function at shutdown). */
#define LEASE_HANDLE "sluice.cpu_lease"

typedef struct lease lease;
typedef struct lease_handle {
  lease *l; /* NULL once released (or cancelled before it was granted) */
} lease_handle;

struct lease {
  sl_work work; /* first: threads.c hands it back */
  int callback_ref;
  int handle_ref; /* keeps the handle alive while the lease waits for its token */
  lease_handle *handle;
  int delivered; /* loop thread: the callback got the lease, which holds its token */
};

/* Gives the token back (if the lease holds one) and frees the lease. */
static void lease_end(lease *l) {
  sl_threads_release(&l->work);
  if (l->handle) l->handle->l = NULL;
  free(l);
}

/* Loop thread: the token is held (how = SL_WORK_RAN): the callback gets the handle; or the
 * lease was cancelled first: it gets nil, "cpu lease: cancelled", "ECANCELED". */
static void lease_done(sl_work *w, int how) {
  lease *l = (lease *)w;
  lua_State *L = sl_main_state();
  if (!L) {
    lease_end(l);
    return;
  }
  sl_push_ref(L, l->callback_ref);
  sl_unref(L, &l->callback_ref);
  /* From here the handle lives as long as Lua holds it; its __gc gives the token back. */
  int handle_ref = l->handle_ref;
  l->handle_ref = LUA_NOREF;
  int n;
  if (how == SL_WORK_CANCELLED) {
    lease_end(l); /* also a lease cancelled after its token was granted: it gives it back */
    n = sl_push_fail(L, "ECANCELED", "cpu lease: cancelled");
  } else {
    l->delivered = 1;
    sl_push_ref(L, handle_ref);
    n = 1;
  }
  sl_unref(L, &handle_ref);
  sl_call(L, n, 0);
}

static void lease_drop(sl_work *w) {
  lease *l = (lease *)w;
  if (l->handle) l->handle->l = NULL;
  free(l);
}

/* lease:release() (also lease:cancel(), lease:close() and the garbage collector): gives the
 * token back, or withdraws a lease not delivered yet (its callback then gets ECANCELED, and
 * a token granted meanwhile goes back). Idempotent. */
static int lease_release(lua_State *L) {
  lease_handle *h = luaL_checkudata(L, 1, LEASE_HANDLE);
  lease *l = h->l;
  if (!l) return 0;
  h->l = NULL;
  l->handle = NULL;
  if (l->delivered)
    lease_end(l);
  else
    sl_threads_cancel(&l->work); /* lease_done ends it */
  return 0;
}

static int lease_held(lua_State *L) {
  lease_handle *h = luaL_checkudata(L, 1, LEASE_HANDLE);
  lua_pushboolean(L, h->l && h->l->delivered);
  return 1;
}

/* pool.cpu_lease(fn) -> lease: waits for a token of the CPU budget in the same queue as
 * CPU-bound jobs, then calls fn(lease) on the loop thread; the token is held until
 * lease:release(). lease:cancel() before that withdraws it (fn gets nil, message,
 * "ECANCELED"). For work outside the pool that uses a CPU: a request to a local CPU-bound
 * model worker process. */
static int l_cpu_lease(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (sl_main_state() == NULL) return luaL_error(L, "cpu lease: the engine is shutting down");
  lease_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->l = NULL;
  if (luaL_newmetatable(L, LEASE_HANDLE)) {
    static const luaL_Reg methods[] = {{"release", lease_release},
                                       {"cancel", lease_release},
                                       {"close", lease_release},
                                       {"held", lease_held},
                                       {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lease_release);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lease *l = calloc(1, sizeof *l);
  if (!l) return luaL_error(L, "cpu lease: out of memory");
  l->work.done = lease_done;
  l->work.drop = lease_drop;
  l->work.lease = 1;
  int rc = sl_threads_submit(sl_loop(L), &l->work);
  if (rc != 0) {
    free(l);
    return luaL_error(L, "cpu lease: cannot start worker threads: %s", uv_strerror(rc));
  }
  h->l = l;
  l->handle = h;
  l->handle_ref = sl_ref(L, -1);
  l->callback_ref = sl_ref(L, 1);
  return 1;
}

/* ---- the module ---------------------------------------------------------------------- */

/* pool.size() -> the number of worker threads. */
static int l_size(lua_State *L) {
  lua_pushinteger(L, sl_pool_size());
  return 1;
}

/* A diagnostic job: sleeps on a worker thread. */
typedef struct work_sleep {
  double seconds;
  double slept;
} work_sleep;

static void work_sleep_run(sl_job *job, void *data) {
  work_sleep *w = data;
  double start = sl_now();
  while (sl_now() - start < w->seconds && !sl_job_cancelled(job)) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  w->slept = sl_now() - start;
}

static int work_sleep_finish(lua_State *L, void *data) {
  lua_pushnumber(L, ((work_sleep *)data)->slept);
  return 1;
}

static const sl_job_class work_sleep_class = {"pool.work_sleep", work_sleep_run, work_sleep_finish,
                                              free};

/* pool.cpu() -> {limit=, running=, peak=, waited=, wait_seconds=}: the CPU budget (the
 * tokens CPU-bound jobs hold; waited counts jobs that had to wait for one: the cap bit). */
static int l_cpu(lua_State *L) {
  sl_cpu_stats st;
  sl_threads_cpu_stats(&st);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, st.limit);
  lua_setfield(L, -2, "limit");
  lua_pushinteger(L, st.running);
  lua_setfield(L, -2, "running");
  lua_pushinteger(L, st.peak);
  lua_setfield(L, -2, "peak");
  lua_pushinteger(L, st.waited);
  lua_setfield(L, -2, "waited");
  lua_pushnumber(L, st.wait_seconds);
  lua_setfield(L, -2, "wait_seconds");
  return 1;
}

/* pool.set_cpu_limit(n): n CPU tokens from now on (a positive integer). */
static int l_set_cpu_limit(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 4096, 1, "a CPU limit from 1 to 4096 expected");
  sl_threads_set_cpu_limit((int)n);
  return 0;
}

/* pool.work_sleep(seconds, fn[, cpu]) -> job: occupies a worker thread for seconds (polling
 * for cancellation every millisecond), then calls fn(seconds_slept). cpu = true: as a
 * CPU-bound job (it holds a CPU token). */
static int l_work_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int cpu = lua_toboolean(L, 3);
  work_sleep *w = calloc(1, sizeof *w);
  if (!w) return luaL_error(L, "out of memory");
  w->seconds = s;
  return cpu ? sl_job_submit_cpu(L, 2, &work_sleep_class, w)
             : sl_job_submit(L, 2, &work_sleep_class, w);
}

int luaopen_sluice_pool(lua_State *L) {
  static const luaL_Reg funcs[] = {{"size", l_size},
                                   {"work_sleep", l_work_sleep},
                                   {"cpu", l_cpu},
                                   {"set_cpu_limit", l_set_cpu_limit},
                                   {"cpu_lease", l_cpu_lease},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
