-- sluice.graph: the stage-graph DSL and its runner.
--
--   local sl = require "sluice"
--   return sl.pipeline "demo" {
--     sources = { files = sl.inputs() },
--     stages = {
--       size  = { from = "files", workers = 4, run = function(item, ctx) return #item.data end },
--       total = { from = "size", collect = true, run = function(items) return #items end },
--     },
--   }
--
-- Every stage runs its own workers (tasks) at once; stages are connected by bounded input
-- queues, so a slow stage holds its upstream (backpressure). Items travel in envelopes
-- {job, id, key, seq, t0, t1, data, attempt, parent, stage}. The full contract is in
-- docs/graph.md; how the package is laid out is in docs/architecture.md:
--
--   dsl       declaring and checking a pipeline          (sl.pipeline, sl.inputs, sl.join ...)
--   job       p:start, the job's task and its API         (stats, stop, cancel, wait ...)
--   source    sl.inputs() and function sources
--   run       workers, and the one path a unit takes through a stage
--   attempt   memo, limits, timeout, retry, dead letters around each execution
--   executor  who executes a unit (the local executor runs `run` in the worker's task)
--   units     batches, collect, gate joins, order
--   deliver   outputs, delivery into the next queues, backpressure
--   keys      when a key and a stage are complete
--   envelope  ids and envelopes
--   cond      condition variables; util: small shared helpers
local util = require "sluice.graph.util"
local dsl = require "sluice.graph.dsl"
local envelope = require "sluice.graph.envelope"
local job = require "sluice.graph.job"
local attempt = require "sluice.graph.attempt"

local M = {}

M.pipeline, M.inputs, M.source, M.stage, M.join, M.load, M.is_pipeline =
  dsl.pipeline, dsl.inputs, dsl.source, dsl.stage, dsl.join, dsl.load, dsl.is_pipeline
M.hash, M.make_id = envelope.hash, envelope.make_id
M.errtext, M.deep_copy, M.merge_into, M.basename = util.errtext, util.deep_copy, util.merge_into,
  util.basename
M._hist_add, M._hist_quantile, M._backoff_delay = util.hist_add, util.hist_quantile,
  attempt.backoff_delay
M.Pipeline, M.Job = dsl.Pipeline, job.Job
M.STAGE_OPTIONS, M.stages_for_run = dsl.STAGE_OPTIONS, dsl.stages_for_run

return M
