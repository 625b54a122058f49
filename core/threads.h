/* threads.h: the engine's worker threads for CPU-heavy work, without Lua.
 *
 * A piece of work is an sl_work the caller embeds in its own struct. Its run function runs
 * on a worker thread; its done function runs afterwards on the loop thread that submitted
 * it (once per submitted work, whatever happened). The pool knows nothing of Lua: the glue
 * that turns a piece of work into a Lua callback is pool.c (sl_job_submit in sluice.h).
 */
#ifndef SLUICE_THREADS_H
#define SLUICE_THREADS_H

#include <stdatomic.h>
#include <uv.h>

typedef struct sl_work sl_work;

/* How a piece of work ended, as its done function is told. */
enum {
  SL_WORK_RAN = 0,       /* run returned, and the work was never cancelled */
  SL_WORK_CANCELLED = 1, /* cancelled: before a thread took it (run was not called) or while
                            run ran (run may have stopped early) */
};

struct sl_work {
  void (*run)(sl_work *w);           /* worker thread */
  void (*done)(sl_work *w, int how); /* loop thread; how is SL_WORK_* */
  void (*drop)(sl_work *w);          /* at shutdown, for work never done; may be NULL */
  int cpu;   /* set by the caller: CPU-bound work, runs only holding a CPU token */
  int lease; /* set by the caller: a CPU lease (sl_threads_lease below); implies cpu */
  /* owned by the pool */
  atomic_int cancelled;
  int started;      /* guarded by the pool's mutex */
  int waited;       /* CPU-bound work that waited for a token (guarded by the mutex) */
  double wait_from; /* when it began to wait */
  int holds;        /* a granted lease that still holds its token (guarded by the mutex) */
  sl_work *next;
};

/* Queues w (its run, done and drop set by the caller; the rest is set here). The first call
 * starts the threads and the loop wake-up on loop. Returns 0 or a negative libuv error code
 * (then w was not queued and nothing will be called). */
int sl_threads_submit(uv_loop_t *loop, sl_work *w);

/* Marks w cancelled: a queued w is taken off the queue and done with SL_WORK_CANCELLED on
 * the next loop iteration; a running one is done when run returns. Cannot fail. */
void sl_threads_cancel(sl_work *w);

/* True once w is cancelled or the pool is shutting down. Safe on any thread. */
int sl_work_cancelled(const sl_work *w);

/* Number of worker threads (SLUICE_THREADS, default: CPUs + 2). */
int sl_threads_size(void);

/* The machine-wide CPU budget: CPU-bound work (w->cpu) starts only while fewer than `limit`
 * CPU-bound works run (default: the CPUs, SLUICE_CPUS overrides); other work passes it in the
 * queue. Counters: what runs now, the most that ever ran at once, how many works had to wait
 * for a token (the cap biting) and the seconds they waited in all. */
typedef struct sl_cpu_stats {
  int limit, running, peak;
  long waited;
  double wait_seconds;
} sl_cpu_stats;
void sl_threads_cpu_stats(sl_cpu_stats *out);
void sl_threads_set_cpu_limit(int limit); /* at least 1 */

/* A CPU lease: a token of the budget for work done outside the pool (a request to a local
 * CPU-bound model worker process). w->lease set, w->run unused: w waits in the same queue as
 * CPU-bound work, in the same order and with the same wait counters; when a token is free a
 * thread takes it and, instead of running it, hands it straight to its done function on the
 * loop thread (SL_WORK_RAN) while the token stays held, until sl_threads_release(w). A lease
 * cancelled while queued is done with SL_WORK_CANCELLED and holds nothing. */
void sl_threads_release(sl_work *w); /* gives the token back; a no-op if w holds none */

/* Stops the threads after the work already running; work not done yet is given to its drop
 * function (done is not called). Closes the loop wake-up handle. */
void sl_threads_shutdown(void);

#endif
