/* test_engine.c: timers, subprocesses and the Lua scheduler on a real loop, set up the way
 * main.c does it, and closing the engine with handles still open. Every case checks that
 * the loop closes cleanly; under ASan the leak checker also sees that every handle's
 * memory was freed. */
#include <signal.h>
#include <unistd.h>

#define H_RUNTIME_ONLY /* runs under valgrind: see harness.h */
#include "harness.h"

static void test_timer_order_and_repeat(void) {
  uv_loop_t loop;
  lua_State *L = h_open(&loop);
  /* Deadlines 100 ms apart: the order holds unless this thread is descheduled for 200 ms
   * between two core.after calls (10 ms apart, a loaded CI machine could do it). */
  CHECK(h_lua(L,
              "local core = require 'sluice.core.core'\n"
              "order = ''\n"
              "for _, d in ipairs({300, 100, 200, 0}) do\n"
              "  core.after(d / 1000, function() order = order .. d .. ' ' end)\n"
              "end\n"
              "ticks = 0\n"
              "local t = core.timer()\n"
              "t:start(0.001, 0.001, function() ticks = ticks + 1; if ticks == 5 then t:close() "
              "end end)\n"
              "local self_closing\n"
              "self_closing = core.after(0.001, function() self_closing:close(); closed_in_cb = 1 "
              "end)\n") == LUA_OK);
  uv_run(&loop, UV_RUN_DEFAULT); /* returns: every timer closed or expired */
  CHECK(strcmp(h_str(L, "order"), "0 100 200 300 ") == 0);
  CHECK_EQ_INT(h_int(L, "ticks"), 5);
  CHECK_EQ_INT(h_int(L, "closed_in_cb"), 1);
  CHECK(h_lua(L, "n = #require('sluice.core.core').handles()") == LUA_OK);
  CHECK_EQ_INT(h_int(L, "n"), 0);
  h_close(L);
}

static void test_timers_collected_and_left_open(void) {
  uv_loop_t loop;
  lua_State *L = h_open(&loop);
  /* An inactive timer nobody references is collected (its handle closed by __gc); an
   * active repeating one left running is closed by sl_engine_close. */
  CHECK(h_lua(L,
              "local core = require 'sluice.core.core'\n"
              "for i = 1, 100 do core.timer() end\n"
              "collectgarbage(); collectgarbage()\n"
              "forever = core.timer()\n"
              "forever:start(10, 10, function() end)\n"
              "core.after(3600, function() end)\n") == LUA_OK);
  uv_run(&loop, UV_RUN_NOWAIT);
  h_close(L);
}

static void test_scheduler_on_the_loop(void) {
  uv_loop_t loop;
  lua_State *L = h_open(&loop);
  CHECK(h_lua(L,
              "local sl = require 'sluice'\n"
              "local q = sl.queue(2)\n"
              "sum = 0\n"
              "sl.spawn(function() for i = 1, 100 do q:put(i); if i % 10 == 0 then sl.sleep(0.001) "
              "end end; q:close() end)\n"
              "main = sl.spawn(function() for v in q:iter() do sum = sum + v end; return "
              "'finished' end)\n") == LUA_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(h_lua(L, "status = main.status") == LUA_OK);
  CHECK_EQ_INT(h_int(L, "sum"), 5050);
  CHECK(strcmp(h_str(L, "status"), "done") == 0);
  h_close(L);
}

static void test_tasks_left_waiting_at_close(void) {
  uv_loop_t loop;
  lua_State *L = h_open(&loop);
  /* Tasks still sleeping, waiting on a process and on a pool job when the engine closes:
   * the finalizers close their handles. */
  CHECK(h_lua(L,
              "local sl = require 'sluice'\n"
              "local pool = require 'sluice.core.pool'\n"
              "sl.spawn(function() sl.sleep(3600) end)\n"
              "sl.spawn(function() sl.exec({'sleep', '3600'}) end)\n"
              "sl.spawn(function() sl.await('job', function(done) return pool.work_sleep(3600, "
              "done) end) end)\n"
              "sl.spawn(function() sl.queue(1):get() end)\n") == LUA_OK);
  uv_run(&loop, UV_RUN_NOWAIT);
  h_close(L);
}

static void test_proc(void) {
  uv_loop_t loop;
  lua_State *L = h_open(&loop);
  CHECK(h_lua(L,
              "local proc = require 'sluice.core.proc'\n"
              "out, events = '', ''\n"
              "p = proc.spawn{file = 'sh', args = {'-c', 'printf hello; printf err >&2; exit 4'},\n"
              "  on_stdout = function(c) if c then out = out .. c else events = events .. 'eof ' "
              "end end,\n"
              "  on_exit = function(code, sig) status = code; events = events .. 'exit' end}\n"
              "local r\n"
              "r, missing_msg, missing_code = proc.spawn{file = '/no/such/binary'}\n"
              "killed = proc.spawn{file = 'sleep', args = {'3600'}, on_exit = function(c, s) "
              "kill_sig = s end}\n"
              "killed:kill('SIGKILL')\n") == LUA_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(strcmp(h_str(L, "out"), "hello") == 0);
  CHECK(strcmp(h_str(L, "events"), "eof exit") == 0); /* exit comes after all output */
  CHECK_EQ_INT(h_int(L, "status"), 4);
  CHECK(strstr(h_str(L, "missing_msg"), "cannot run '/no/such/binary'") != NULL);
  CHECK(strcmp(h_str(L, "missing_code"), "ENOENT") == 0);
  CHECK_EQ_INT(h_int(L, "kill_sig"), SIGKILL);
  h_close(L);
}

static void test_proc_collected_while_running(void) {
  uv_loop_t loop;
  lua_State *L = h_open(&loop);
  /* A running process whose handle is collected is killed and its handles closed. The
   * self reference keeps it alive until exit, so only lua_close collects it here. */
  CHECK(h_lua(L,
              "local proc = require 'sluice.core.proc'\n"
              "p = proc.spawn{file = 'sleep', args = {'3600'}, stdin = true}\n"
              "pid = p:pid()\n"
              "p:write(string.rep('x', 100000))\n") == LUA_OK);
  long long pid = h_int(L, "pid");
  CHECK(pid > 0);
  uv_run(&loop, UV_RUN_NOWAIT);
  h_close(L);
  /* killed with SIGKILL: soon gone, or a zombie nobody reaps any more */
  char path[64], state = '?';
  snprintf(path, sizeof path, "/proc/%lld/stat", pid);
  for (int i = 0; i < 5000; i++) {
    FILE *f = fopen(path, "r");
    if (!f) {
      state = 'Z';
      break;
    }
    if (fscanf(f, "%*d %*s %c", &state) != 1) state = '?';
    fclose(f);
    if (state == 'Z') break;
    usleep(1000);
  }
  CHECK(state == 'Z');
}

static void test_error_reporting(void) {
  uv_loop_t loop;
  lua_State *L = h_open(&loop);
  CHECK(h_lua(L,
              "local core = require 'sluice.core.core'\n"
              "reports = 0\n"
              "core.set_error_handler(function(e, where) reports = reports + 1; last = tostring(e) "
              ".. ' @' .. where end)\n"
              "core.after(0, function() error('timer boom') end)\n"
              "core.after(0.001, function() after_error = 1 end)\n") == LUA_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(h_int(L, "reports"), 1);
  CHECK(strstr(h_str(L, "last"), "timer boom") != NULL);
  CHECK(strstr(h_str(L, "last"), "@callback") != NULL);
  CHECK_EQ_INT(h_int(L, "after_error"), 1);
  /* sl_call keeps the stack balanced on error */
  int top = lua_gettop(L);
  CHECK(h_lua(L, "error('direct')") == LUA_ERRRUN);
  CHECK_EQ_INT(lua_gettop(L), top);
  h_close(L);
}

int main(void) {
  test_timer_order_and_repeat();
  test_timers_collected_and_left_open();
  test_scheduler_on_the_loop();
  test_tasks_left_waiting_at_close();
  test_proc();
  test_proc_collected_while_running();
  test_error_reporting();
  return h_done("test_engine");
}
