# The REPL in a real terminal: drives `sluice repl` inside tmux (send-keys / capture-pane).
# Every wait polls the screen against a deadline, so a loaded machine only makes it slower.
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

SOURCE = os.environ.get("SLUICE_SOURCE_DIR", os.getcwd())
BUILD = os.environ.get("SLUICE_BUILD_DIR", os.path.join(SOURCE, "build"))
BIN = os.environ.get("SLUICE_BIN", os.path.join(BUILD, "sluice"))
DEADLINE = 60  # seconds for any one thing to appear on the screen
PROMPT = "sluice> "


class Terminal:
    """One `sluice repl` in a tmux pane on a private tmux server."""
    count = 0

    def __init__(self, tmpdir, args=(), history=None):
        Terminal.count += 1
        self.socket = "sluice-test-%d-%d" % (os.getpid(), Terminal.count)
        self.history = history or os.path.join(tmpdir, "history")
        env = ["env", "HOME=" + tmpdir, "SLUICE_HISTORY=" + self.history, "TERM=xterm"]
        if "SLUICE_LUA_DIR" in os.environ:
            env.append("SLUICE_LUA_DIR=" + os.environ["SLUICE_LUA_DIR"])
        for k in ("ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS"):
            if k in os.environ:
                env.append("%s=%s" % (k, os.environ[k]))
        cmd = " ".join(shq(a) for a in env + [BIN, "repl"] + list(args))
        cmd = "sh -c " + shq(cmd + '; echo "[sluice exited with status $?]"')
        self.tmux("new-session", "-d", "-s", "t", "-x", "150", "-y", "50", cmd)
        self.tmux("set-option", "-t", "t", "remain-on-exit", "on")

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.socket] + list(args), check=True,
                              capture_output=True, text=True, timeout=30).stdout

    def screen(self):
        return self.tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-200")

    def lines(self):
        return [l.rstrip() for l in self.screen().splitlines() if l.strip()]

    def wait(self, pattern, after=0):
        """Waits until the screen, from the after-th non-empty line on, matches pattern."""
        deadline = time.monotonic() + DEADLINE
        while True:
            text = "\n".join(self.lines()[after:])
            m = re.search(pattern, text, re.M)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError("never saw %r on the screen:\n%s" % (pattern, self.screen()))
            time.sleep(0.05)

    def wait_prompt(self, after=0):
        """Waits for an empty prompt as the last line; returns the number of lines."""
        deadline = time.monotonic() + DEADLINE
        while True:
            ls = self.lines()
            if len(ls) > after and ls[-1] == PROMPT.rstrip():
                return len(ls)
            if time.monotonic() > deadline:
                raise AssertionError("no prompt; screen:\n%s" % self.screen())
            time.sleep(0.05)

    def type(self, text):
        self.tmux("send-keys", "-t", "t", "-l", text)

    def key(self, *keys):
        self.tmux("send-keys", "-t", "t", *keys)

    def line(self, text):
        self.type(text)
        self.key("Enter")

    def run(self, text):
        """Types a line at an idle prompt and waits for the next prompt; returns the
        prompt line with the text, then the lines printed."""
        n = self.wait_prompt()
        self.line(text)
        end = self.wait_prompt(after=n)
        return self.lines()[n - 1:end - 1]

    def exit_status(self):
        return int(self.wait(r"^\[sluice exited with status (\d+)\]$").group(1))

    def close(self):
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def norm(lines):
    """capture-pane turns tabs into spaces: compare words."""
    return [" ".join(l.split()) for l in lines]


def shq(s):
    return "'" + s.replace("'", "'\\''") + "'"


class Repl(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="sluice-repl-")
        self.terms = []

    def tearDown(self):
        for t in self.terms:
            t.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def term(self, *args, **kw):
        t = Terminal(self.tmp, args, **kw)
        self.terms.append(t)
        t.wait_prompt()
        return t

    def test_expressions_statements_and_pretty_printing(self):
        t = self.term()
        self.assertEqual(t.run("x = 6 * 7"), [PROMPT + "x = 6 * 7"])
        self.assertEqual(t.run("x")[1:], ["42"])
        self.assertEqual(t.run("=x + 1")[1:], ["43"])
        self.assertEqual(norm(t.run("x, 'two', nil")[1:]), ["42 two nil"])
        out = t.run("{a = 1, list = {1, 2}, deep = {b = {c = {d = {}}}}}")[1:]
        self.assertEqual(out[0], "{")
        self.assertIn("  a = 1,", out)
        self.assertIn("      c = {...},", out)
        self.assertEqual(out[-1], "}")
        err = t.run("error('bad line')")[1:]
        self.assertEqual(err[0], "stdin:1: bad line")
        self.assertEqual(t.run("local y = = 2")[1:], ["stdin:1: unexpected symbol near '='"])

    def test_multi_line_input(self):
        t = self.term()
        n = t.wait_prompt()
        t.line("for i = 1, 3 do")
        t.wait(r"^    >>$", after=n)
        t.line("  print('line' .. i)")
        t.line("end")
        end = t.wait_prompt(after=n)
        self.assertEqual(t.lines()[n - 1:end - 1], [
            PROMPT + "for i = 1, 3 do", "    >>   print('line' .. i)", "    >> end",
            "line1", "line2", "line3"])
        n = t.wait_prompt()
        t.line("function double(v)")
        t.line("  return v * 2")
        t.line("end")
        t.wait_prompt(after=n + 2)
        self.assertEqual(t.run("double(21)")[1:], ["42"])

    def test_waiting_calls_work_at_the_prompt(self):
        t = self.term()
        out = t.run("t0 = sluice.now(); sluice.sleep(1); print('slept', sluice.now() - t0 >= 1)")
        self.assertEqual(norm(out[1:]), ["slept true"])
        t.run("q = sluice.queue(1); sluice.spawn(function() sluice.sleep(0.2) q:put('handed over') end)")
        self.assertEqual(t.run("q:get()")[1:], ["handed over"])
        t.run("r = sluice.exec({'echo', 'from a process'})")
        self.assertEqual(t.run("r.stdout")[1:], ["from a process"])

    def test_background_task_prints_above_the_prompt_keeping_typed_text(self):
        t = self.term()
        t.run("ticks = 0; sluice.spawn(function() for i = 1, 40 do sluice.sleep(0.1) "
              "ticks = i; print('tick ' .. i) end end)")
        m = t.wait(r"^tick (\d+)$")
        t.type("abc = 'typed'")
        # wait for a tick printed after the text was typed
        deadline = time.monotonic() + DEADLINE
        while True:
            ls = t.lines()
            if ls[-1] == PROMPT + "abc = 'typed'" and ls[-2].startswith("tick "):
                if int(ls[-2].split()[1]) >= int(m.group(1)) + 2:
                    break
            self.assertLess(time.monotonic(), deadline, "screen:\n" + t.screen())
            time.sleep(0.05)
        # the typed text was kept in the line being edited: Enter runs it
        t.key("Enter")
        t.wait(r"^tick 40$")
        n = t.wait_prompt()
        self.assertEqual(t.run("abc")[1:], ["typed"])
        ticks = [l for l in t.lines() if l.startswith("tick ")]
        self.assertEqual(ticks, ["tick %d" % i for i in range(1, 41)])

    def test_ctrl_c_cancels_a_running_line(self):
        t = self.term()
        n = t.wait_prompt()
        t0 = time.monotonic()
        # Ctrl-C only once the line runs (a Ctrl-C before Enter is handled would drop the line)
        t.line("print('sleeping') sluice.sleep(100) print('not reached')")
        t.wait(r"^sleeping$", after=n)
        t.key("C-c")
        end = t.wait_prompt(after=n)
        self.assertLess(time.monotonic() - t0, 90)
        self.assertEqual(t.lines()[n:end - 1], ["sleeping", "cancelled"])
        self.assertNotIn("not reached", t.lines()[n:])
        self.assertEqual(t.run("1 + 1")[1:], ["2"])

    def test_ctrl_c_interrupts_a_busy_loop(self):
        t = self.term()
        n = t.wait_prompt()
        # Ctrl-C only once the loop runs (a Ctrl-C before Enter is handled would drop the line)
        t.line("print('spinning') while true do end")
        t.wait(r"^spinning$", after=n)
        t.key("C-c")
        t.wait(r"^(stdin:\d+: )?interrupted!", after=n)
        t.wait_prompt(after=n)
        self.assertEqual(t.run("'alive'")[1:], ["alive"])

    def test_ctrl_c_at_the_prompt_drops_the_typed_line(self):
        t = self.term()
        n = t.wait_prompt()
        t.type("this is not finished")
        t.wait(r"^sluice> this is not finished$", after=n - 1)
        t.key("C-c")
        t.wait(r"^sluice> this is not finished\^C$")
        t.wait_prompt(after=n)
        # also inside an unfinished multi-line chunk
        t.line("if true then")
        t.wait(r"^    >>$")
        t.key("C-c")
        t.wait_prompt(after=n + 2)
        self.assertEqual(t.run("'fresh'")[1:], ["fresh"])
        self.assertEqual(t.lines().count(PROMPT.rstrip()), 1, t.screen())

    def test_history_survives_a_restart(self):
        history = os.path.join(self.tmp, "hist")
        t = self.term(history=history)
        t.run("marker_one = 41")
        t.run("marker_two = marker_one + 1")
        t.key("C-d")
        self.assertEqual(t.exit_status(), 0)
        with open(history) as f:
            self.assertEqual(f.read().splitlines()[-2:], ["marker_one = 41", "marker_two = marker_one + 1"])
        t2 = self.term(history=history)
        n = t2.wait_prompt()
        t2.key("Up")
        t2.wait(r"^sluice> marker_two = marker_one \+ 1$", after=n - 1)
        t2.key("Up")
        t2.wait(r"^sluice> marker_one = 41$", after=n - 1)
        t2.key("Enter")
        t2.wait_prompt(after=n)
        self.assertEqual(t2.run("marker_one")[1:], ["41"])

    def test_repl_with_a_script_has_its_values_in_scope(self):
        script = os.path.join(self.tmp, "script.lua")
        with open(script, "w") as f:
            f.write("local sl = require 'sluice'\n"
                    "local greeting = 'hello'\n"
                    "counter = 41\n"
                    "local function add(a, b) return a + b end\n"
                    "sl.sleep(0.05)\n"
                    "local total = add(counter, 1)\n"
                    "local function make(v) return {value = v} end\n"
                    "return make(total)\n")  # a tail call: the chunk's frame is gone at the end
        t = self.term(script)
        out = t.run("greeting, counter, add(2, 3), total, script.value, arg[0] ~= nil")
        self.assertEqual(norm(out[1:]), ["hello 41 5 42 42 true"])

    def test_script_error_is_shown_and_the_prompt_still_works(self):
        script = os.path.join(self.tmp, "broken.lua")
        with open(script, "w") as f:
            f.write("before = 'set'\nerror('script broke')\n")
        t = self.term(script)
        t.wait(r"broken\.lua:2: script broke")
        self.assertEqual(t.run("before")[1:], ["set"])

    def test_sl_is_predefined(self):
        t = self.term()
        self.assertEqual(norm(t.run("sl == sluice, type(sl.spawn)")[1:]), ["true function"])

    def test_tab_completes_globals_fields_and_methods(self):
        t = self.term()
        t.run("box = {alpha = 1, alps = 2, beta = {gamma = 3}}")
        t.run("q = sl.queue(2)")
        n = t.wait_prompt()

        def complete(typed, shown):
            """Types typed then Tab; waits for the prompt line to read shown; clears it."""
            t.type(typed)
            t.key("Tab")
            t.wait(r"^sluice> %s$" % re.escape(shown), after=n - 1)
            t.key("C-u")

        complete("sl.pipel", "sl.pipeline")       # a name sl loads on first use
        complete("box.be", "box.beta")            # a field
        complete("q:pu", "q:put")                 # a method, from the metatable's __index
        complete("tostr", "tostring")             # a global
        complete("retu", "return")                # a keyword
        complete("box.a", "box.alp")              # several: their common part
        # nested fields, then run the line
        t.type("box.be")
        t.key("Tab")
        t.type(".ga")
        t.key("Tab")
        t.wait(r"^sluice> box\.beta\.gamma$", after=n - 1)
        t.key("Enter")
        t.wait(r"^3$", after=n)
        # Tab Tab lists the candidates
        n = t.wait_prompt()
        t.type("box.alp")
        t.key("Tab", "Tab")
        t.wait(r"box\.alpha\s+box\.alps", after=n)
        t.key("C-u")
        # nothing to complete: the line stays as it was, and the prompt still works
        t.type("nosuchname.x")
        t.key("Tab")
        t.key("C-u")
        self.assertEqual(t.run("1 + 1")[1:], ["2"])

    def test_help_command(self):
        t = self.term()
        out = "\n".join(t.run(":help")[1:])
        self.assertIn("usage: sluice repl", out)
        self.assertIn("Tab", out)
        self.assertIn("sl.load(", out)
        self.assertEqual(t.run(":nope")[1:], ["unknown prompt command ':nope' (:help lists them)"])

    def test_ctrl_d_leaves(self):
        t = self.term()
        t.key("C-d")
        self.assertEqual(t.exit_status(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
