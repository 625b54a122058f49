-- sluice.graph.executor: who executes a stage's units.
--
-- The runner (sluice.graph.run) takes a unit from the stage's queue, and sluice.graph.attempt
-- wraps each attempt of it in the stage's policy (memo, limits, timeout, retry, dead letter).
-- Inside that, the attempt is handed to the stage's executor:
--
--   executor.call(S, u, ctx) -> value[, opts]  |  nil, err[, code]     (or raises)
--
-- S is the stage (S.name, S.run, S.on_gate, S.params, S.job.config), u the unit (u.kind is
-- "item" with u.env, or "batch"/"group"/"gate" with u.items; u.key, u.seq, u.path is its id)
-- and ctx the call's context (ctx:emit(data, opts) for each output beyond the returned one,
-- ctx:event, ctx:log, ctx.attempt). An executor returns what the stage's run returned, or
-- raises what it raised; it may wait (the worker task that called it waits with it). It
-- counts nothing: items done, failed and retried, busy time, latency, limits and events are
-- the runner's, the same for every executor. A stage's `workers` is how many units its
-- executor is given at once.
--
-- The local executor runs `run` in the worker's own task on this process's loop. A remote
-- executor (a broker's) would send the unit's data to a worker process and turn the replies
-- into ctx:emit calls and a return value.
local M = {}

M["local"] = {
  name = "local",
  call = function(S, u, ctx)
    local kind = u.kind
    if kind == "item" then return S.run(u.env, ctx) end
    if kind == "gate" then return S.on_gate(u.items, ctx) end
    return S.run(u.items, ctx)
  end,
}

-- The executor of stage spec s (today: the local one).
function M.for_stage(s)
  return s.executor or M["local"]
end

return M
