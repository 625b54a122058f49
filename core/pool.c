/* pool.c: the engine's worker threads for CPU-heavy jobs (see sl_job_submit in sluice.h).
 *
 * Jobs wait in a FIFO guarded by one mutex; workers take them in order. A finished job goes
 * on a done list and one uv_async_t wakes the loop, which calls each job's finish function
 * and its Lua callback. The async handle is unreferenced while no job is in flight, so an
 * idle pool never keeps the loop alive. Threads start on the first submit.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sluice.h"

#define JOB_HANDLE "sluice.job"

typedef struct job_handle {
  sl_job *job; /* NULL once the job has completed */
} job_handle;

struct sl_job {
  const sl_job_class *cls;
  void *data;
  atomic_int cancelled;
  int started; /* guarded by the pool mutex */
  int callback_ref;
  int handle_ref; /* keeps the Lua handle alive while the job is in flight */
  job_handle *handle;
  struct sl_job *next;
};

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t *threads;
  int nthreads;
  int stopping;
  atomic_int shutdown; /* set by sl_pool_shutdown: every job counts as cancelled */
  sl_job *queue_head, *queue_tail;
  sl_job *done_head, *done_tail;
  uv_async_t async;
  int async_ready;
  int in_flight; /* loop thread only */
  lua_State *L;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

int sl_pool_size(void) {
  const char *env = getenv("SLUICE_THREADS");
  if (env && atoi(env) > 0) return atoi(env);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  return (int)n + 2;
}

int sl_job_cancelled(const sl_job *job) {
  return atomic_load(&job->cancelled) || atomic_load(&pool.shutdown);
}

static void push_done_locked(sl_job *job) {
  job->next = NULL;
  if (pool.done_tail)
    pool.done_tail->next = job;
  else
    pool.done_head = job;
  pool.done_tail = job;
}

static void *worker_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&pool.mu);
  for (;;) {
    while (!pool.queue_head && !pool.stopping) pthread_cond_wait(&pool.cv, &pool.mu);
    if (!pool.queue_head) break; /* stopping and nothing left */
    sl_job *job = pool.queue_head;
    pool.queue_head = job->next;
    if (!pool.queue_head) pool.queue_tail = NULL;
    job->started = 1;
    pthread_mutex_unlock(&pool.mu);
    if (!sl_job_cancelled(job)) job->cls->run(job, job->data);
    pthread_mutex_lock(&pool.mu);
    push_done_locked(job);
    uv_async_send(&pool.async);
  }
  pthread_mutex_unlock(&pool.mu);
  return NULL;
}

static void free_job(sl_job *job) {
  if (job->cls->free) job->cls->free(job->data);
  free(job);
}

/* Runs on the loop thread: completes every job on the done list. */
static void on_async(uv_async_t *async) {
  lua_State *L = pool.L;
  (void)async;
  pthread_mutex_lock(&pool.mu);
  sl_job *list = pool.done_head;
  pool.done_head = pool.done_tail = NULL;
  pthread_mutex_unlock(&pool.mu);
  while (list) {
    sl_job *job = list;
    list = job->next;
    if (job->handle) job->handle->job = NULL;
    sl_unref(L, &job->handle_ref);
    sl_push_ref(L, job->callback_ref);
    sl_unref(L, &job->callback_ref);
    int n;
    if (sl_job_cancelled(job)) {
      n = sl_push_fail(L, "ECANCELED", "%s: cancelled", job->cls->name);
    } else {
      n = job->cls->finish(L, job->data);
    }
    free_job(job);
    if (--pool.in_flight == 0) uv_unref((uv_handle_t *)&pool.async);
    sl_call(L, n, 0); /* errors are reported by sl_call; the next job still completes */
  }
}

static int start_threads(lua_State *L) {
  if (!pool.async_ready) {
    int rc = uv_async_init(sl_loop(L), &pool.async, on_async);
    if (rc != 0) return rc;
    uv_unref((uv_handle_t *)&pool.async);
    pool.async_ready = 1;
    pool.L = sl_main_state();
  }
  if (pool.threads) return 0;
  atomic_store(&pool.shutdown, 0);
  int n = sl_pool_size();
  pool.threads = calloc((size_t)n, sizeof *pool.threads);
  if (!pool.threads) return UV_ENOMEM;
  pool.stopping = 0;
  for (int i = 0; i < n; i++) {
    if (pthread_create(&pool.threads[i], NULL, worker_main, NULL) != 0) break;
    pool.nthreads++;
  }
  return pool.nthreads > 0 ? 0 : UV_EAGAIN;
}

static job_handle *check_handle(lua_State *L) { return luaL_checkudata(L, 1, JOB_HANDLE); }

/* job:cancel(): marks the job cancelled. A job still queued completes at once (on the next
 * loop iteration); a running one completes when its run function returns. */
static int job_cancel(lua_State *L) {
  job_handle *h = check_handle(L);
  sl_job *job = h->job;
  if (!job) return 0;
  atomic_store(&job->cancelled, 1);
  pthread_mutex_lock(&pool.mu);
  if (!job->started) {
    sl_job **pp = &pool.queue_head, *prev = NULL;
    while (*pp && *pp != job) {
      prev = *pp;
      pp = &(*pp)->next;
    }
    if (*pp) {
      *pp = job->next;
      if (pool.queue_tail == job) pool.queue_tail = prev;
      job->started = 1;
      push_done_locked(job);
      uv_async_send(&pool.async);
    }
  }
  pthread_mutex_unlock(&pool.mu);
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

int sl_job_submit(lua_State *L, int callback_idx, const sl_job_class *cls, void *data) {
  callback_idx = lua_absindex(L, callback_idx);
  if (lua_type(L, callback_idx) != LUA_TFUNCTION || sl_main_state() == NULL) {
    /* data is ours from here on, whatever happens */
    if (cls->free) cls->free(data);
    if (sl_main_state() == NULL) return luaL_error(L, "%s: the engine is shutting down", cls->name);
    return luaL_typeerror(L, callback_idx, "function");
  }
  sl_job *job = calloc(1, sizeof *job);
  if (!job) {
    if (cls->free) cls->free(data);
    return luaL_error(L, "%s: out of memory", cls->name);
  }
  job->cls = cls;
  job->data = data;
  job->callback_ref = LUA_NOREF;
  job->handle_ref = LUA_NOREF;
  int rc = start_threads(L);
  if (rc != 0) {
    free_job(job);
    return luaL_error(L, "%s: cannot start worker threads: %s", cls->name, uv_strerror(rc));
  }
  job_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->job = job;
  if (luaL_newmetatable(L, JOB_HANDLE)) {
    static const luaL_Reg methods[] = {
        {"cancel", job_cancel}, {"active", job_active}, {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, job_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_setmetatable(L, -2);
  job->handle = h;
  job->handle_ref = sl_ref(L, -1);
  job->callback_ref = sl_ref(L, callback_idx);
  if (pool.in_flight++ == 0) uv_ref((uv_handle_t *)&pool.async);
  pthread_mutex_lock(&pool.mu);
  job->next = NULL;
  if (pool.queue_tail)
    pool.queue_tail->next = job;
  else
    pool.queue_head = job;
  pool.queue_tail = job;
  pthread_cond_signal(&pool.cv);
  pthread_mutex_unlock(&pool.mu);
  return 1;
}

void sl_pool_shutdown(void) {
  pthread_mutex_lock(&pool.mu);
  /* Running jobs see sl_job_cancelled() turn true; queued ones are skipped. */
  atomic_store(&pool.shutdown, 1);
  for (sl_job *j = pool.queue_head; j; j = j->next) atomic_store(&j->cancelled, 1);
  pool.stopping = 1;
  pthread_cond_broadcast(&pool.cv);
  pthread_mutex_unlock(&pool.mu);
  for (int i = 0; i < pool.nthreads; i++) pthread_join(pool.threads[i], NULL);
  free(pool.threads);
  pool.threads = NULL;
  pool.nthreads = 0;
  /* Jobs that were still queued or done but not delivered are dropped with their data;
   * their Lua references die with the state. */
  sl_job *lists[2] = {pool.queue_head, pool.done_head};
  for (int k = 0; k < 2; k++) {
    while (lists[k]) {
      sl_job *j = lists[k];
      lists[k] = j->next;
      if (j->handle) j->handle->job = NULL; /* job:cancel() during lua_close is a no-op */
      free_job(j);
    }
  }
  pool.queue_head = pool.queue_tail = pool.done_head = pool.done_tail = NULL;
  pool.in_flight = 0;
  if (pool.async_ready && !uv_is_closing((uv_handle_t *)&pool.async))
    uv_close((uv_handle_t *)&pool.async, NULL);
  pool.async_ready = 0;
}
