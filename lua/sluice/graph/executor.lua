-- sluice.graph.executor: who executes a stage's units.
--
-- The runner (sluice.graph.run) takes a unit off the stage's queue or ready list, and
-- sluice.graph.attempt wraps each attempt of it in the stage's policy (memo, limits, timeout,
-- retry, dead letter). Inside that, the unit is executed by a function its stage's executor
-- made when the job started:
--
--   executor.bind(S) -> exec_item, exec_units, exec_gate
--     exec_item(env, ctx)    an item             (stages without batch or collect)
--     exec_units(items, ctx) a batch or a group  (batch and collect stages)
--     exec_gate(items, ctx)  the gate's items    (on_gate of a join with a gate)
--   each -> value[, opts]  |  nil, err[, code]   (or raises), exactly as the stage's run.
--
-- S is the stage (S.name, S.run, S.on_gate, S.params, S.job.config). ctx is the call's
-- context: ctx._unit is the unit (u.path its id, u.key, u.seq, u.kind), ctx:emit(data, opts)
-- hands on one output beyond the returned one (and may wait: backpressure), ctx:event,
-- ctx:log, ctx.attempt. An executor function may wait; the worker task that called it waits
-- with it, so a stage's `workers` is how many of its units are executing at once.
--
-- Who counts what: an executor counts nothing. Items done, failed and retried, busy time,
-- latency, limits, the memo and events are the runner's, the same whatever executes the
-- unit. An error an executor raises or returns is the attempt's error (retried, then a dead
-- letter); sluice.Cancelled raised out of it means the job is being cancelled.
--
-- The local executor runs the stage's own functions in the worker's task on this process's
-- loop. A remote one (a broker's) would send the unit's data (env.data, or each item's) with
-- the stage's name and config to a worker process, turn its outputs into ctx:emit calls and
-- return its returned value or error.
local M = {}

M["local"] = {
  name = "local",
  bind = function(S) return S.run, S.run, S.on_gate end,
}

return M
