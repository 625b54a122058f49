/* threads.c: the engine's worker threads (see threads.h).
 *
 * Work waits in a FIFO guarded by one mutex; threads take it in order. Finished work goes on
 * a done list and one uv_async_t wakes the loop, which calls each done function. The async
 * handle is unreferenced while no work is in flight, so an idle pool never keeps the loop
 * alive. Threads start on the first submit.
 */
#include "threads.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t *threads;
  int nthreads;
  int stopping;
  atomic_int shutdown; /* set by sl_threads_shutdown: every work counts as cancelled */
  sl_work *queue_head, *queue_tail;
  sl_work *done_head, *done_tail;
  uv_async_t async;
  int async_ready;
  int in_flight; /* loop thread only */
  /* the CPU budget (guarded by mu) */
  int cpu_limit; /* 0: not set yet (the CPUs) */
  int cpu_running, cpu_peak;
  long cpu_waited;
  double cpu_wait_seconds;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* Seconds on libuv's monotonic clock (the one sl_now reads; uv_hrtime is thread-safe). */
static double mono_now(void) { return (double)uv_hrtime() / 1e9; }

static int cpu_limit_locked(void) {
  if (pool.cpu_limit <= 0) {
    const char *env = getenv("SLUICE_CPUS");
    long n = env && atoi(env) > 0 ? atoi(env) : sysconf(_SC_NPROCESSORS_ONLN);
    pool.cpu_limit = n < 1 ? 1 : (int)n;
  }
  return pool.cpu_limit;
}

void sl_threads_cpu_stats(sl_cpu_stats *out) {
  pthread_mutex_lock(&pool.mu);
  out->limit = cpu_limit_locked();
  out->running = pool.cpu_running;
  out->peak = pool.cpu_peak;
  out->waited = pool.cpu_waited;
  out->wait_seconds = pool.cpu_wait_seconds;
  pthread_mutex_unlock(&pool.mu);
}

void sl_threads_set_cpu_limit(int limit) {
  pthread_mutex_lock(&pool.mu);
  pool.cpu_limit = limit < 1 ? 1 : limit;
  pthread_cond_broadcast(&pool.cv); /* more tokens: waiting CPU-bound work may start */
  pthread_mutex_unlock(&pool.mu);
}

/* The first queued work a thread may start now: any work that is not CPU-bound, or CPU-bound
 * work while a token is free. Unlinks it. A CPU-bound work passed over for lack of a token is
 * counted once as having waited. */
static sl_work *take_locked(void) {
  int tokens = pool.cpu_running < cpu_limit_locked();
  sl_work *prev = NULL;
  for (sl_work *w = pool.queue_head; w; prev = w, w = w->next) {
    if (w->cpu && !tokens) {
      if (!w->waited) {
        w->waited = 1;
        w->wait_from = mono_now();
        pool.cpu_waited++;
      }
      continue;
    }
    if (prev)
      prev->next = w->next;
    else
      pool.queue_head = w->next;
    if (pool.queue_tail == w) pool.queue_tail = prev;
    if (w->cpu) {
      if (w->waited) pool.cpu_wait_seconds += mono_now() - w->wait_from;
      if (++pool.cpu_running > pool.cpu_peak) pool.cpu_peak = pool.cpu_running;
    }
    return w;
  }
  return NULL;
}

int sl_threads_size(void) {
  const char *env = getenv("SLUICE_THREADS");
  if (env && atoi(env) > 0) return atoi(env);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  return (int)n + 2;
}

int sl_work_cancelled(const sl_work *w) {
  return atomic_load(&w->cancelled) || atomic_load(&pool.shutdown);
}

static void push_done_locked(sl_work *w) {
  w->next = NULL;
  if (pool.done_tail)
    pool.done_tail->next = w;
  else
    pool.done_head = w;
  pool.done_tail = w;
}

static void *thread_main(void *arg) {
  (void)arg;
  /* Named for top -H and bench/cpu_sample.py; threads a job starts (FFmpeg's decoders) take
   * this name too. */
  pthread_setname_np(pthread_self(), "sluice-pool");
  pthread_mutex_lock(&pool.mu);
  for (;;) {
    sl_work *w = NULL;
    while (!(w = take_locked()) && !pool.stopping) pthread_cond_wait(&pool.cv, &pool.mu);
    if (!w) break; /* stopping: work left waiting for a token is dropped at shutdown */
    w->started = 1;
    if (w->lease) { /* granted: the token stays held until sl_threads_release */
      w->holds = 1;
      push_done_locked(w);
      uv_async_send(&pool.async);
      continue;
    }
    pthread_mutex_unlock(&pool.mu);
    if (!sl_work_cancelled(w)) w->run(w);
    pthread_mutex_lock(&pool.mu);
    if (w->cpu) {
      pool.cpu_running--;
      pthread_cond_broadcast(&pool.cv); /* a token is free */
    }
    push_done_locked(w);
    uv_async_send(&pool.async);
  }
  pthread_mutex_unlock(&pool.mu);
  return NULL;
}

/* Loop thread: calls the done function of every finished work. */
static void on_async(uv_async_t *async) {
  (void)async;
  pthread_mutex_lock(&pool.mu);
  sl_work *list = pool.done_head;
  pool.done_head = pool.done_tail = NULL;
  pthread_mutex_unlock(&pool.mu);
  while (list) {
    sl_work *w = list;
    list = w->next;
    if (--pool.in_flight == 0) uv_unref((uv_handle_t *)&pool.async);
    /* cancelled before it ran, or cancelled and skipped by the thread */
    int how = sl_work_cancelled(w) ? SL_WORK_CANCELLED : SL_WORK_RAN;
    w->done(w, how); /* may free w */
  }
}

static int start_threads(uv_loop_t *loop) {
  if (!pool.async_ready) {
    int rc = uv_async_init(loop, &pool.async, on_async);
    if (rc != 0) return rc;
    uv_unref((uv_handle_t *)&pool.async);
    pool.async_ready = 1;
  }
  if (pool.threads) return 0;
  atomic_store(&pool.shutdown, 0);
  int n = sl_threads_size();
  pool.threads = calloc((size_t)n, sizeof *pool.threads);
  if (!pool.threads) return UV_ENOMEM;
  pool.stopping = 0;
  for (int i = 0; i < n; i++) {
    if (pthread_create(&pool.threads[i], NULL, thread_main, NULL) != 0) break;
    pool.nthreads++;
  }
  return pool.nthreads > 0 ? 0 : UV_EAGAIN;
}

int sl_threads_submit(uv_loop_t *loop, sl_work *w) {
  int rc = start_threads(loop);
  if (rc != 0) return rc;
  atomic_store(&w->cancelled, 0);
  w->started = 0;
  w->waited = 0;
  w->holds = 0;
  if (w->lease) w->cpu = 1;
  if (pool.in_flight++ == 0) uv_ref((uv_handle_t *)&pool.async);
  pthread_mutex_lock(&pool.mu);
  w->next = NULL;
  if (pool.queue_tail)
    pool.queue_tail->next = w;
  else
    pool.queue_head = w;
  pool.queue_tail = w;
  pthread_cond_signal(&pool.cv);
  pthread_mutex_unlock(&pool.mu);
  return 0;
}

void sl_threads_cancel(sl_work *w) {
  atomic_store(&w->cancelled, 1);
  pthread_mutex_lock(&pool.mu);
  if (!w->started) {
    sl_work **pp = &pool.queue_head, *prev = NULL;
    while (*pp && *pp != w) {
      prev = *pp;
      pp = &(*pp)->next;
    }
    if (*pp) {
      *pp = w->next;
      if (pool.queue_tail == w) pool.queue_tail = prev;
      w->started = 1;
      push_done_locked(w);
      uv_async_send(&pool.async);
    }
  }
  pthread_mutex_unlock(&pool.mu);
}

void sl_threads_release(sl_work *w) {
  pthread_mutex_lock(&pool.mu);
  if (w->holds) {
    w->holds = 0;
    pool.cpu_running--;
    pthread_cond_broadcast(&pool.cv); /* a token is free */
  }
  pthread_mutex_unlock(&pool.mu);
}

void sl_threads_shutdown(void) {
  pthread_mutex_lock(&pool.mu);
  /* Running work sees sl_work_cancelled() turn true; queued work is skipped. */
  atomic_store(&pool.shutdown, 1);
  for (sl_work *w = pool.queue_head; w; w = w->next) atomic_store(&w->cancelled, 1);
  pool.stopping = 1;
  pthread_cond_broadcast(&pool.cv);
  pthread_mutex_unlock(&pool.mu);
  for (int i = 0; i < pool.nthreads; i++) pthread_join(pool.threads[i], NULL);
  free(pool.threads);
  pool.threads = NULL;
  pool.nthreads = 0;
  /* Work still queued, or done but not delivered, goes to its drop function. */
  sl_work *lists[2] = {pool.queue_head, pool.done_head};
  for (int k = 0; k < 2; k++) {
    while (lists[k]) {
      sl_work *w = lists[k];
      lists[k] = w->next;
      if (w->drop) w->drop(w);
    }
  }
  pool.queue_head = pool.queue_tail = pool.done_head = pool.done_tail = NULL;
  pool.in_flight = 0;
  if (pool.async_ready && !uv_is_closing((uv_handle_t *)&pool.async))
    uv_close((uv_handle_t *)&pool.async, NULL);
  pool.async_ready = 0;
}
