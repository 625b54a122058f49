-- sluice.runtime.suggest: edit distances, and "did you mean" for names a person typed (a
-- setting, a provider, a stage, a command, a model).
--
--   suggest.distance({"a","b"}, {"a","c"})          -- 1: Levenshtein over two lists
--   suggest.distance("fusoin", "fusion", true)       -- 1: strings, a transposition counts 1
--   suggest.nearest("gpt-4o-mimi", ids, 3)           -- the 3 closest ids
--   suggest.close("fusoin", {"fusion", "window"})    -- {"fusion"}: likely typos only
--   suggest.did_you_mean("fusoin", names)            -- " (did you mean 'fusion'?)" or ""
local M = {}

local function chars(s)
  local t = {}
  for c in s:gmatch(".") do t[#t + 1] = c end
  return t
end

-- distance(a, b[, transpose]) -> the edit distance between two lists (elements compared with
-- ==) or two strings (compared by character); with transpose, swapping two neighbours counts
-- as one edit (optimal string alignment), as typos do.
function M.distance(a, b, transpose)
  if type(a) == "string" then a = chars(a) end
  if type(b) == "string" then b = chars(b) end
  local prev2, prev, cur = {}, {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur[0] = i
    local ai = a[i]
    for j = 1, #b do
      local cost = (ai == b[j]) and 0 or 1
      local d = prev[j - 1] + cost
      if prev[j] + 1 < d then d = prev[j] + 1 end
      if cur[j - 1] + 1 < d then d = cur[j - 1] + 1 end
      if transpose and i > 1 and j > 1 and ai == b[j - 1] and a[i - 1] == b[j] and prev2[j - 2] + 1 < d then
        d = prev2[j - 2] + 1
      end
      cur[j] = d
    end
    prev2, prev, cur = prev, cur, prev2
  end
  return prev[#b]
end

local function scored(name, candidates)
  local low = tostring(name):lower()
  local out = {}
  for _, c in ipairs(candidates) do
    out[#out + 1] = { id = c, d = M.distance(low, tostring(c):lower(), true) }
  end
  table.sort(out, function(x, y) if x.d ~= y.d then return x.d < y.d end return tostring(x.id) < tostring(y.id) end)
  return out
end

-- nearest(name, candidates, n) -> up to n candidates, closest first (ties by name).
function M.nearest(name, candidates, n)
  local out = {}
  for i, s in ipairs(scored(name, candidates)) do
    if i > (n or 3) then break end
    out[i] = s.id
  end
  return out
end

-- close(name, candidates[, n]) -> the candidates near enough to be what was meant: at most
-- one edit per three characters (at least one), closest first, at most n (default 3).
function M.close(name, candidates, n)
  local limit = math.max(1, #tostring(name) // 3)
  local out = {}
  for _, s in ipairs(scored(name, candidates)) do
    if s.d > limit or #out >= (n or 3) then break end
    if s.d > 0 or tostring(s.id) ~= tostring(name) then out[#out + 1] = s.id end
  end
  return out
end

-- did_you_mean(name, candidates) -> " (did you mean 'x'?)", " (did you mean 'x' or 'y'?)",
-- or "" when nothing is close.
function M.did_you_mean(name, candidates)
  local c = M.close(name, candidates, 2)
  if #c == 0 then return "" end
  local q = {}
  for i, x in ipairs(c) do q[i] = "'" .. tostring(x) .. "'" end
  return " (did you mean " .. table.concat(q, " or ") .. "?)"
end

return M
