/* sluice.h: the engine's internal C API, shared by every file in core/.
 *
 * The process has one libuv loop and one lua_State, both touched only by the loop thread.
 * C modules expose small callback-style primitives to Lua; the Lua library (lua/sluice/)
 * turns those callbacks into waits of coroutine tasks. Every call from C into Lua goes
 * through sl_call(), which runs it under a traceback handler, so a Lua error never unwinds
 * through libuv, libcurl or FFmpeg frames.
 *
 * Conventions every module follows:
 *  - A Lua-visible module lives in core/<name>.c and defines luaopen_sluice_<name>; the
 *    build finds it and registers it as package.preload["sluice.core.<name>"].
 *  - A handle's userdata holds a pointer to a heap struct; the struct is freed only in the
 *    libuv close callback (or the pool's completion), never inside its own callback.
 *  - A callback function passed from Lua is kept alive with a registry reference while the
 *    operation is active (sl_ref/sl_unref).
 *  - Misuse raises (luaL_check*); runtime failures are reported as nil, message, code.
 */
#ifndef SLUICE_H
#define SLUICE_H

#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define SLUICE_VERSION "0.1.0"

/* ---- engine ------------------------------------------------------------------------- */

/* Returns the loop the engine runs on. Cannot fail once sl_engine_init has run. */
uv_loop_t *sl_loop(lua_State *L);

/* Returns the main Lua state. Callbacks from the loop must call into Lua on this state,
 * never on the L a C function was called with: that may be a task's coroutine, which is
 * suspended by the time the callback runs. */
lua_State *sl_main_state(void);

/* Creates a Lua state with the C library's allocator and luaL_newstate's panic and warning
 * functions (alloc.c). Returns NULL when out of memory. */
lua_State *sl_state_new(void);

/* Closes L (as lua_close). sl_engine_close calls it, so a state made by sl_state_new is
 * closed by sl_engine_close. */
void sl_state_close(lua_State *L);

/* Opens in L the standard libraries, the C modules in modules (package.preload; a list ended
 * by {NULL, NULL}: sl_all_modules is every module of the build), lua-cjson and
 * sluice.core.core (with its fields lua_dir and share_dir), and puts path_prefix
 * (";"-terminated templates) before package.path (libs.c). Raises on out of memory, as
 * luaL_openlibs does. */
void sl_open_libs(lua_State *L, const luaL_Reg *modules, const char *path_prefix, const char *lua_dir,
                  const char *share_dir);

/* Every C module of the build, as "sluice.core.<name>" (modules.c). */
extern const luaL_Reg sl_all_modules[];

/* Creates the engine state for L on loop and stores it in L's registry.
 * Returns 0 on success or a negative libuv error code. */
int sl_engine_init(lua_State *L, uv_loop_t *loop);

/* Calls the function below nargs arguments on the stack under the traceback handler.
 * On success leaves nresults values; on error reports the message and traceback through
 * the engine's error reporter (see sl_report_error), pops everything and returns the Lua
 * status code. The stack is balanced in both cases apart from the results. */
int sl_call(lua_State *L, int nargs, int nresults);

/* Reports an error value at the top of the stack (and pops it): calls the Lua function
 * registered with core.set_error_handler, or prints to stderr when there is none. */
void sl_report_error(lua_State *L, const char *where);

/* Registry helpers. sl_ref pops nothing: it references the value at idx. */
int sl_ref(lua_State *L, int idx);
void sl_unref(lua_State *L, int *ref);
void sl_push_ref(lua_State *L, int ref);

/* Pushes nil, message, code for a libuv error and returns 3 (luaL_fileresult style). */
int sl_push_uv_error(lua_State *L, int uv_err, const char *what);

/* Pushes nil, message[, code] and returns the number of values pushed. */
int sl_push_fail(lua_State *L, const char *code, const char *fmt, ...);

/* Raises "attempt to use a closed <what>" when ptr is NULL. */
void sl_check_open(lua_State *L, const void *ptr, const char *what);

/* Monotonic seconds since an arbitrary start, with nanosecond resolution. Cannot fail. */
double sl_now(void);

/* ---- jobs on the thread pool (pool.c, on threads.c) ---------------------------------
 * CPU-heavy work (decode, encode, OCR, speech recognition, hashing) runs on the engine's
 * own worker threads, not on libuv's pool, so long jobs cannot starve file-system calls and
 * DNS. A job's run function runs on a worker thread and must not touch Lua. Its finish
 * function runs on the loop thread afterwards and pushes the values handed to the Lua
 * callback. Its free function releases the job's data exactly once, whatever happened.
 * The threads themselves (threads.h) know nothing of Lua; sl_engine_close stops them.
 */
typedef struct sl_job sl_job;

typedef struct sl_job_class {
  const char *name;                        /* for messages: "media.probe", ... */
  void (*run)(sl_job *job, void *data);    /* worker thread */
  int (*finish)(lua_State *L, void *data); /* loop thread; returns values pushed */
  void (*free)(void *data);                /* any thread; may be NULL */
} sl_job_class;

/* Queues a job. The Lua function at callback_idx is called with finish's values when the
 * job is done; if the job was cancelled before it finished, the callback is called with
 * nil, "cancelled", "ECANCELED" instead and finish is not called. Takes ownership of
 * data in every case (it is freed with cls->free). Pushes a job handle (userdata with a
 * :cancel() method) and returns 1. */
int sl_job_submit(lua_State *L, int callback_idx, const sl_job_class *cls, void *data);

/* As sl_job_submit, for CPU-bound work (decoding, recognition, OCR): the job runs only
 * holding one of the machine-wide CPU tokens (threads.h), so local engines share the cores
 * instead of oversubscribing them. */
int sl_job_submit_cpu(lua_State *L, int callback_idx, const sl_job_class *cls, void *data);

/* True once the job has been cancelled; long run functions poll it to stop early.
 * Safe to call from the worker thread. */
int sl_job_cancelled(const sl_job *job);

/* Number of worker threads (SLUICE_THREADS, default: CPUs + 2). */
int sl_pool_size(void);

/* ---- shutdown ------------------------------------------------------------------------ */

/* Stops the pool, closes L (whose finalizers close the handles Lua owns), closes every
 * handle still open, runs the loop until all close callbacks have run and closes the loop.
 * Returns 0 when the loop closed cleanly, UV_EBUSY otherwise. */
int sl_engine_close(lua_State *L);

#endif
