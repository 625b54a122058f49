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

static const sl_job_class work_sleep_class = {"pool.work_sleep", work_sleep_run,
                                              work_sleep_finish, free};

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
  return cpu ? sl_job_submit_cpu(L, 2, &work_sleep_class, w) : sl_job_submit(L, 2, &work_sleep_class, w);
}

int luaopen_sluice_pool(lua_State *L) {
  static const luaL_Reg funcs[] = {{"size", l_size},
                                  {"work_sleep", l_work_sleep},
                                  {"cpu", l_cpu},
                                  {"set_cpu_limit", l_set_cpu_limit},
                                  {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
