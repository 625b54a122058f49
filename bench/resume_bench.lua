-- bench/resume_bench.lua: what keying the job store's memo by content costs per item.
--
--   sluice run bench/resume_bench.lua [ITEMS] [ROUNDS]
--
-- A source of ITEMS items and three trivial stages (a -> b -> c), run with a job store twice
-- in a row (a first run that stores every item, then a re-run that takes every item from the
-- store), keyed (sluice.graph.memokey: each item's key made once and carried, the settings a
-- stage reads recorded, outputs keyed by content) and, as the baseline measured in the same
-- process, unkeyed (the memo by item id alone, as before resume was keyed). Best of ROUNDS;
-- prints items/s of each and the ratios keyed/unkeyed.
local sl = require "sluice"
local S = require "sluice.app.store"

local N = tonumber((...)) or 5000
local ROUNDS = tonumber(select(2, ...)) or 3
local dir = (os.getenv("SLUICE_BUILD_DIR") or "/tmp") .. "/bench_resume"
os.execute("mkdir -p " .. dir)

local p = sl.pipeline "bench" {
  defaults = { scale = 2 },
  sources = { src = function(ctx)
    for i = 1, N do ctx:emit({ n = i, text = "item " .. i }) end
  end },
  stages = {
    a = { from = "src", run = function(env, ctx) return { n = env.data.n * ctx.config.scale, text = env.data.text } end },
    b = { from = "a", run = function(env) return { n = env.data.n + 1, text = env.data.text:upper() } end },
    c = { from = "b", run = function(env) return env.data.n end },
  },
}

-- Runs the pipeline with a store at path; keyed or not. Returns seconds.
local function run(path, keyed)
  local st = assert(S.open(path))
  if not keyed then
    local attach = st.attach
    st.attach = function(self, job)
      local r = attach(self, job)
      job.memo.keyed = false
      return r
    end
  end
  local t0 = sl.now()
  local s = p:start({ store = st, job_id = "J" }):wait()
  local dt = sl.now() - t0
  assert(s.ok, tostring(s.error))
  st:close()
  return dt
end

local best = {}
for _ = 1, ROUNDS do
  for _, keyed in ipairs { false, true } do
    local path = dir .. "/" .. (keyed and "keyed" or "plain") .. ".db"
    for _, x in ipairs { "", "-wal", "-shm" } do os.remove(path .. x) end
    local first = run(path, keyed)
    local again = run(path, keyed)
    local k = keyed and "keyed" or "plain"
    best[k .. "_first"] = math.min(best[k .. "_first"] or math.huge, first)
    best[k .. "_again"] = math.min(best[k .. "_again"] or math.huge, again)
  end
end
local function rate(t) return N / t end
print(string.format("%d items x 3 stages, best of %d", N, ROUNDS))
print(string.format("first run (stores all):  unkeyed %8.0f items/s  keyed %8.0f items/s  keyed/unkeyed %.2f",
  rate(best.plain_first), rate(best.keyed_first), best.plain_first / best.keyed_first))
print(string.format("re-run (reuses all):     unkeyed %8.0f items/s  keyed %8.0f items/s  keyed/unkeyed %.2f",
  rate(best.plain_again), rate(best.keyed_again), best.plain_again / best.keyed_again))
