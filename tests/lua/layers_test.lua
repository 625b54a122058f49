-- The layers of lua/sluice/ (docs/architecture.md): which folder's modules may require which.
-- Reads every module's `require "sluice..."` calls (outside comments) and checks them against
-- the table below, so a module that reaches up a layer fails here, naming the file and line.
local T = require "sluice.app.test"

local SRC = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/lua/sluice"

-- Each layer, and the module name prefixes its modules may require. "sluice" alone is the
-- runtime facade (lua/sluice/init.lua); sluice.core.* are the C modules.
local RUNTIME = { "sluice", "sluice.core.", "sluice.runtime." }
local function plus(base, ...)
  local out = {}
  for _, p in ipairs(base) do out[#out + 1] = p end
  for _, p in ipairs { ... } do out[#out + 1] = p end
  return out
end
local PURE_BLOCKS = { "sluice.blocks.text", "sluice.blocks.subtitles", "sluice.blocks.fusion",
  "sluice.blocks.feed", "sluice.blocks.grow" }
local ALLOWED = {
  runtime = RUNTIME,
  facade = plus(RUNTIME, "sluice.graph", "sluice.blocks.stages"), -- sl.pipeline, sl.capture: lazily
  graph = plus(RUNTIME, "sluice.graph"),
  media = plus(RUNTIME, "sluice.media"),
  blocks = plus(RUNTIME, "sluice.media", table.unpack(PURE_BLOCKS)),
  providers = plus(RUNTIME, "sluice.media", "sluice.providers", table.unpack(PURE_BLOCKS)),
  stages = plus(RUNTIME, "sluice.media", "sluice.providers", "sluice.graph", "sluice.blocks."),
  app = nil, -- the command line, REPL, progress, dashboard, store, trace: anything
}

local function layer_of(rel) -- rel: path below lua/sluice/
  if rel == "init.lua" then return "facade" end
  if rel == "blocks/stages.lua" then return "stages" end
  return rel:match("^([^/]+)/")
end

-- An entry ending in "." is a prefix; "sluice" is that module only; any other entry is a
-- module and the modules below it (sluice.graph: sluice.graph and sluice.graph.*).
local function allowed(list, name)
  for _, p in ipairs(list) do
    if name == p then return true end
    local prefix = p:sub(-1) == "." and p or (p ~= "sluice" and p .. ".")
    if prefix and name:sub(1, #prefix) == prefix then return true end
  end
  return false
end

local function modules()
  local r = assert(require("sluice").exec { "find", SRC, "-name", "*.lua" })
  local out = {}
  for path in r.stdout:gmatch("[^\n]+") do out[#out + 1] = path end
  table.sort(out)
  return out
end

T.case("every module requires only its own layer and the layers below", function()
  local bad, checked = {}, 0
  for _, path in ipairs(modules()) do
    local rel = path:sub(#SRC + 2)
    local layer = layer_of(rel)
    T.ok(layer == "facade" or ALLOWED[layer] ~= nil or layer == "app",
      rel .. " is in no known layer (" .. tostring(layer) .. ")")
    local list = ALLOWED[layer]
    local n = 0
    for line in io.lines(path) do
      n = n + 1
      local code = line:gsub("%-%-.*$", "")
      for name in code:gmatch("require%s*%(?%s*[\"']([%w_.]+)[\"']") do
        if name:match("^sluice") and list and not allowed(list, name) then
          bad[#bad + 1] = string.format("%s:%d (%s layer) requires %s", rel, n, layer, name)
        end
      end
    end
    checked = checked + 1
  end
  T.ok(checked > 40, "read " .. checked .. " modules")
  T.eq(table.concat(bad, "\n"), "", "requires that reach up a layer")
end)

T.case("the checker catches a module that reaches up", function()
  T.ok(not allowed(ALLOWED.runtime, "sluice.graph"))
  T.ok(not allowed(ALLOWED.graph, "sluice.app.store"))
  T.ok(not allowed(ALLOWED.providers, "sluice.blocks.stages"))
  T.ok(not allowed(ALLOWED.blocks, "sluice.providers.openai"))
  T.ok(allowed(ALLOWED.providers, "sluice.blocks.text"))
  T.ok(allowed(ALLOWED.graph, "sluice.graph.keys"))
  T.ok(not allowed(ALLOWED.graph, "sluice.graphx"))
end)

T.case("no module of the graph package is over 500 lines", function()
  for _, path in ipairs(modules()) do
    if path:match("/graph/[^/]+%.lua$") then
      local n = 0
      for _ in io.lines(path) do n = n + 1 end
      T.ok(n <= 500, path:sub(#SRC + 2) .. " has " .. n .. " lines")
    end
  end
end)

return T.run()
