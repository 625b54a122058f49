-- sluice cache: the provider result cache shared by every job on the machine
-- (sluice.providers.cache).
--
--   sluice cache [stats] [--cache PATH]    what it holds, per provider and model, and what its
--                                          answers saved
--   sluice cache prune DAYS [--cache PATH] delete the results not used for more than DAYS days
--   sluice cache rm [--cache PATH]         delete every result
local cache = require "sluice.providers.cache"
local progress = require "sluice.app.progress"

local M = {}

M.USAGE = [[
usage: sluice cache [stats] [--cache PATH]
       sluice cache prune DAYS [--cache PATH]
       sluice cache rm [--cache PATH]

Shows and prunes the provider result cache that every job on this machine shares.

Provider results (transcriptions, image descriptions, completions) are kept by the content
of their request (the audio's samples, the image's bytes, the prompt, model, parameters and
provider), so a renamed copy of an input, or another job with the same chunks, makes no
call for them. The file is $SLUICE_CACHE, else $XDG_CACHE_HOME/sluice/results.db
(~/.cache/sluice/results.db); `sluice run --cache PATH` uses another, `--no-cache` none, and a
stage with `cache = false` is never cached. `stats` lists what it holds and what its answers
saved, `prune DAYS` deletes the results not used for more than DAYS days, `rm` all of them.]]

local function fmt_bytes(n)
  n = n or 0
  if n >= 1048576 then return string.format("%.1f MiB", n / 1048576) end
  if n >= 1024 then return string.format("%.1f KiB", n / 1024) end
  return string.format("%d B", n)
end

function M.main(args, cli)
  local pos, path = {}, nil
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--cache" then
      path = args[i + 1]
      if not path then
        cli.eprint("sluice cache: --cache needs a path\n" .. M.USAGE)
        return 2
      end
      i = i + 2
    elseif a:match("^%-%-cache=") then
      path = a:sub(9)
      i = i + 1
    elseif a == "-h" or a == "--help" then
      print(M.USAGE)
      return 0
    elseif a:sub(1, 2) == "--" then
      cli.eprint("sluice cache: unknown option '" .. a .. "'\n" .. M.USAGE)
      return 2
    else
      pos[#pos + 1] = a
      i = i + 1
    end
  end
  path = path or os.getenv("SLUICE_CACHE")
  if path == "off" or path == "" then path = nil end
  local cmd = pos[1] or "stats"
  if cmd ~= "stats" and cmd ~= "prune" and cmd ~= "rm" then
    cli.eprint("sluice cache: unknown command '" .. cmd .. "'\n" .. M.USAGE)
    return 2
  end
  local days
  if cmd == "prune" then
    days = tonumber(pos[2] or "")
    if not days or days < 0 then
      cli.eprint("sluice cache prune: DAYS must be a number of days (got " .. tostring(pos[2]) .. ")")
      return 2
    end
  end
  local file = path or cache.default_path()
  local f = io.open(file, "rb")
  if not f then
    if cmd == "stats" then
      print("cache " .. file .. ": empty (no file yet)")
      return 0
    end
    print("cache " .. file .. ": nothing to delete (no file)")
    return 0
  end
  f:close()
  local c, err = cache.open(file)
  if not c then
    cli.eprint("sluice cache: " .. tostring(err))
    return 2
  end
  local code = 0
  if cmd == "stats" then
    local s, serr = c:stats()
    if not s then
      cli.eprint("sluice cache: " .. tostring(serr))
      code = 2
    else
      print(string.format("cache %s: %d results, %s; %d answers from it saved %s (they cost %s when made)",
        file, s.entries, fmt_bytes(s.bytes), s.hits, progress.usd(s.saved), progress.usd(s.usd)))
      if #s.by > 0 then
        local rows = { { "provider", "model", "role", "results", "hits", "cost", "saved" } }
        for _, r in ipairs(s.by) do
          rows[#rows + 1] = { tostring(r.provider or "?"), tostring(r.model or "?"), tostring(r.role or "?"),
            tostring(r.entries or 0), tostring(r.hits or 0), progress.usd(r.usd or 0), progress.usd(r.saved or 0) }
        end
        io.stdout:write(progress.grid(rows))
      end
    end
  else
    local n, derr
    if cmd == "prune" then n, derr = c:prune(days) else n, derr = c:clear() end
    if not n then
      cli.eprint("sluice cache: " .. tostring(derr))
      code = 2
    else
      print(string.format("cache %s: deleted %d result%s", file, n, n == 1 and "" or "s"))
    end
  end
  c:close()
  return code
end

return M
