/* test_pool.c: the engine's thread pool (sl_job_submit): completion, FIFO order with one
 * worker, cancelling queued and running jobs, errors in callbacks, shutdown with jobs in
 * flight, data ownership. Every case opens its own engine and checks that the loop closes
 * cleanly. */
#include <stdatomic.h>
#include <time.h>

#define H_RUNTIME_ONLY /* runs under valgrind: see harness.h */
#include "harness.h"

static atomic_int runs, frees, saw_cancel, gate;

typedef struct test_job {
  int index;
  int mode; /* 0: return at once, 1: wait for the gate, 2: wait until cancelled */
} test_job;

static void pause_1ms(void) {
  struct timespec ts = {0, 1000000};
  nanosleep(&ts, NULL);
}

static void test_job_run(sl_job *job, void *data) {
  test_job *t = data;
  atomic_fetch_add(&runs, 1);
  if (t->mode == 1) {
    while (!atomic_load(&gate) && !sl_job_cancelled(job)) pause_1ms();
  } else if (t->mode == 2) {
    while (!sl_job_cancelled(job)) pause_1ms();
  }
  if (sl_job_cancelled(job)) atomic_fetch_add(&saw_cancel, 1);
}

static int test_job_finish(lua_State *L, void *data) {
  lua_pushinteger(L, ((test_job *)data)->index);
  return 1;
}

static void test_job_free(void *data) {
  atomic_fetch_add(&frees, 1);
  free(data);
}

static const sl_job_class test_job_class = {"test.job", test_job_run, test_job_finish,
                                            test_job_free};

/* submit(index, mode, callback) -> job */
static int l_submit(lua_State *L) {
  test_job *t = calloc(1, sizeof *t);
  t->index = (int)luaL_checkinteger(L, 1);
  t->mode = (int)luaL_checkinteger(L, 2);
  return sl_job_submit(L, 3, &test_job_class, t);
}

static int l_open_gate(lua_State *L) {
  (void)L;
  atomic_store(&gate, 1);
  return 0;
}

static lua_State *open_engine(uv_loop_t *loop, const char *threads) {
  setenv("SLUICE_THREADS", threads, 1);
  atomic_store(&runs, 0);
  atomic_store(&frees, 0);
  atomic_store(&saw_cancel, 0);
  atomic_store(&gate, 0);
  lua_State *L = h_open(loop);
  lua_register(L, "submit", l_submit);
  lua_register(L, "open_gate", l_open_gate);
  return L;
}

static void test_fifo_with_one_worker(void) {
  uv_loop_t loop;
  lua_State *L = open_engine(&loop, "1");
  CHECK(h_lua(L,
              "order = {}\n"
              "for i = 1, 50 do submit(i, 0, function(idx) order[#order + 1] = idx end) end\n") ==
        LUA_OK);
  uv_run(&loop, UV_RUN_DEFAULT); /* returns once no job is in flight: the pool is unref'd */
  CHECK(h_lua(L,
              "in_order = 1\n"
              "for i = 1, 50 do if order[i] ~= i then in_order = 0 end end\n"
              "n = #order\n") == LUA_OK);
  CHECK_EQ_INT(h_int(L, "n"), 50);
  CHECK_EQ_INT(h_int(L, "in_order"), 1);
  CHECK_EQ_INT(atomic_load(&runs), 50);
  CHECK_EQ_INT(atomic_load(&frees), 50);
  h_close(L);
}

static void test_many_jobs_many_workers(void) {
  uv_loop_t loop;
  lua_State *L = open_engine(&loop, "4");
  CHECK(
      h_lua(
          L,
          "seen, calls = {}, 0\n"
          "for i = 1, 400 do\n"
          "  submit(i, 0, function(idx) calls = calls + 1; seen[idx] = (seen[idx] or 0) + 1 end)\n"
          "end\n") == LUA_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(h_lua(L,
              "once = 1\n"
              "for i = 1, 400 do if seen[i] ~= 1 then once = 0 end end\n") == LUA_OK);
  CHECK_EQ_INT(h_int(L, "calls"), 400);
  CHECK_EQ_INT(h_int(L, "once"), 1);
  CHECK_EQ_INT(atomic_load(&frees), 400);
  h_close(L);
}

static void test_cancel_queued(void) {
  uv_loop_t loop;
  lua_State *L = open_engine(&loop, "1");
  /* The blocker holds the only worker until the cancelled job's callback opens the gate; a
   * cancel that did not complete the queued job at once would leave both waiting (the
   * safety timer then opens the gate and the checks fail). */
  CHECK(h_lua(L,
              "local core = require 'sluice.core.core'\n"
              "results = {}\n"
              "blocker = submit(1, 1, function(idx) results.blocker = idx end)\n"
              "queued = submit(2, 0, function(a, b, c)\n"
              "  results.queued = {a, b, c}; open_gate()\n"
              "end)\n"
              "was_active = queued:active() and 1 or 0\n"
              "queued:cancel()\n"
              "queued:cancel()\n"
              "safety = core.after(5, function() open_gate() end)\n") == LUA_OK);
  uv_run(&loop, UV_RUN_NOWAIT);
  while (h_lua(L, "done = results.blocker and 1 or 0") == LUA_OK && h_int(L, "done") == 0)
    uv_run(&loop, UV_RUN_ONCE);
  CHECK(h_lua(L,
              "safety:close()\n"
              "q = results.queued\n"
              "q1 = q[1] == nil and 1 or 0\n"
              "q2 = q[2]\n"
              "q3 = q[3]\n"
              "still_active = queued:active() and 1 or 0\n"
              "text = tostring(queued)\n") == LUA_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(h_int(L, "was_active"), 1);
  CHECK_EQ_INT(h_int(L, "q1"), 1);
  CHECK(strcmp(h_str(L, "q2"), "test.job: cancelled") == 0);
  CHECK(strcmp(h_str(L, "q3"), "ECANCELED") == 0);
  CHECK_EQ_INT(h_int(L, "still_active"), 0);
  CHECK(strcmp(h_str(L, "text"), "sluice.job (done)") == 0);
  CHECK_EQ_INT(atomic_load(&runs), 1); /* the cancelled job never ran */
  CHECK_EQ_INT(atomic_load(&frees), 2);
  h_close(L);
}

static void test_cancel_running(void) {
  uv_loop_t loop;
  lua_State *L = open_engine(&loop, "2");
  CHECK(h_lua(L,
              "local core = require 'sluice.core.core'\n"
              "job = submit(7, 2, function(a, b, c) got = {a, b, c} end)\n"
              "core.after(0.05, function() job:cancel() end)\n") == LUA_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(h_lua(L, "g1 = got[1] == nil and 1 or 0; g3 = got[3]") == LUA_OK);
  CHECK_EQ_INT(h_int(L, "g1"), 1);
  CHECK(strcmp(h_str(L, "g3"), "ECANCELED") == 0);
  CHECK_EQ_INT(atomic_load(&runs), 1);
  CHECK_EQ_INT(atomic_load(&saw_cancel), 1); /* the run function saw sl_job_cancelled() */
  CHECK_EQ_INT(atomic_load(&frees), 1);
  h_close(L);
}

static void test_error_in_callback(void) {
  uv_loop_t loop;
  lua_State *L = open_engine(&loop, "1");
  CHECK(
      h_lua(
          L,
          "local core = require 'sluice.core.core'\n"
          "errors = 0\n"
          "core.set_error_handler(function(e, where) errors = errors + 1; msg = tostring(e) end)\n"
          "submit(1, 0, function() error('callback boom') end)\n"
          "submit(2, 0, function() second = 'ran' end)\n") == LUA_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(h_int(L, "errors"), 1);
  CHECK(strstr(h_str(L, "msg"), "callback boom") != NULL);
  CHECK(strstr(h_str(L, "msg"), "stack traceback") != NULL);
  CHECK(strcmp(h_str(L, "second"), "ran") == 0);
  h_close(L);
}

static void test_submit_misuse_frees_data(void) {
  uv_loop_t loop;
  lua_State *L = open_engine(&loop, "1");
  CHECK(h_lua(L, "ok, err = pcall(submit, 1, 0, 42); ok = ok and 1 or 0") == LUA_OK);
  CHECK_EQ_INT(h_int(L, "ok"), 0);
  CHECK(strstr(h_str(L, "err"), "function expected") != NULL);
  CHECK_EQ_INT(atomic_load(&frees), 1); /* submit took ownership even though it raised */
  CHECK_EQ_INT(atomic_load(&runs), 0);
  h_close(L);
}

static void test_shutdown_with_jobs_in_flight(void) {
  uv_loop_t loop;
  lua_State *L = open_engine(&loop, "2");
  CHECK(h_lua(L,
              "called = 0\n"
              "for i = 1, 5 do jobs = submit(i, 2, function() called = called + 1 end) end\n") ==
        LUA_OK);
  /* wait until both workers are inside a run function */
  for (int i = 0; i < 5000 && atomic_load(&runs) < 2; i++) pause_1ms();
  CHECK_EQ_INT(atomic_load(&runs), 2);
  h_close(L); /* must not hang: running jobs see sl_job_cancelled() */
  CHECK_EQ_INT(atomic_load(&saw_cancel), 2);
  CHECK_EQ_INT(atomic_load(&runs), 2); /* queued jobs were dropped, not run */
  CHECK_EQ_INT(atomic_load(&frees), 5);
}

static void test_work_sleep_from_lua(void) {
  uv_loop_t loop;
  lua_State *L = open_engine(&loop, "3");
  CHECK(
      h_lua(L,
            "local pool = require 'sluice.core.pool'\n"
            "slept = {}\n"
            "for i = 1, 3 do pool.work_sleep(0.02, function(s) slept[#slept + 1] = s end) end\n") ==
      LUA_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(h_lua(L, "n = #slept; okay = (slept[1] >= 0.02 and slept[3] >= 0.02) and 1 or 0") ==
        LUA_OK);
  CHECK_EQ_INT(h_int(L, "n"), 3);
  CHECK_EQ_INT(h_int(L, "okay"), 1);
  h_close(L);
}

int main(void) {
  test_fifo_with_one_worker();
  test_many_jobs_many_workers();
  test_cancel_queued();
  test_cancel_running();
  test_error_in_callback();
  test_submit_misuse_frees_data();
  test_shutdown_with_jobs_in_flight();
  test_work_sleep_from_lua();
  return h_done("test_pool");
}
