-- sluice serve: the dashboard over a job store, without running anything.
--
--   sluice serve [--store PATH] [--addr ADDR | ADDR] [--token T]
local core = require "sluice.core.core"
local S = require "sluice.app.store"
local dashboard = require "sluice.app.dashboard"

local M = {}

M.USAGE = [[
usage: sluice serve [--store PATH] [ADDR] [--token T]

Serves the dashboard of past jobs; nothing runs.

Serves the dashboard for the jobs in a store (default $SLUICE_STORE, else out/sluice.db) at
ADDR (default 127.0.0.1:8750). A non-loopback ADDR needs --token; every request must then
carry it ("Authorization: Bearer T", or open the page once as /?token=T: a cookie carries it
from then on). Ctrl-C stops.]]

function M.main(args, cli)
  local o = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--store" or a == "--addr" or a == "--token" or a == "--web" then
      o[a:sub(3)] = args[i + 1]
      i = i + 2
    elseif a == "-h" or a == "--help" then
      print(M.USAGE)
      return 0
    elseif not a:match("^%-") and not o.addr then
      o.addr = a
      i = i + 1
    else
      cli.eprint("sluice serve: unknown option '" .. a .. "'\n" .. M.USAGE)
      return 2
    end
  end
  local path = o.store or os.getenv("SLUICE_STORE") or "out/sluice.db"
  local f = io.open(path, "r")
  if not f then
    cli.eprint("sluice serve: no job store at '" .. path .. "' (use --store PATH)")
    return 2
  end
  f:close()
  local store, err = S.open(path)
  if not store then
    cli.eprint("sluice serve: " .. tostring(err))
    return 2
  end
  -- each job's files come from its own output folder, as the store recorded it (not the
  -- store's folder: a store may hold jobs that wrote elsewhere)
  local dash, derr = dashboard.start { addr = o.addr, token = o.token, store = store, web_dir = o.web }
  if not dash then
    cli.eprint("sluice serve: " .. tostring(derr))
    store:close()
    return 2
  end
  print("sluice: dashboard for " .. path .. " at " .. dash.url .. " (Ctrl-C stops)")
  io.stdout:flush()
  core.on_interrupt(function()
    dash:close()
    store:close()
  end, "run")
  return nil -- the loop runs until the server has closed
end

return M
