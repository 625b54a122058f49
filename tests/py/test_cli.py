# The sluice command line: exit statuses, error messages, SIGINT handling, help/version,
# and a working `cmake --install`. Spawns the real binary.
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

SOURCE = os.environ.get("SLUICE_SOURCE_DIR", os.getcwd())
BUILD = os.environ.get("SLUICE_BUILD_DIR", os.path.join(SOURCE, "build"))
BIN = os.environ.get("SLUICE_BIN", os.path.join(BUILD, "sluice"))


def run(args, script=None, timeout=60, **kw):
    """Runs sluice with args (script text goes to a temp file named by {script})."""
    with tempfile.TemporaryDirectory() as d:
        if script is not None:
            path = os.path.join(d, "script.lua")
            with open(path, "w") as f:
                f.write(script)
            args = [a.replace("{script}", path) for a in args]
        p = subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout, **kw)
        return p.returncode, p.stdout, p.stderr


def wait_for_line(proc, text, deadline):
    """Reads proc's stdout until a line containing text; returns everything read."""
    got = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        got += line
        if text in line:
            return got
    raise AssertionError("never saw %r; got %r" % (text, got))


class ExitStatus(unittest.TestCase):
    def test_success_is_0(self):
        code, out, err = run(["run", "{script}"], "print('hi')")
        self.assertEqual((code, out, err), (0, "hi\n", ""))

    def test_script_returning_false_or_1_is_1(self):
        self.assertEqual(run(["run", "{script}"], "return false")[0], 1)
        self.assertEqual(run(["run", "{script}"], "return 1")[0], 1)
        self.assertEqual(run(["run", "{script}"], "return true")[0], 0)
        self.assertEqual(run(["run", "{script}"], "return 0")[0], 0)

    def test_run_cli_result_is_the_status(self):
        script = ("return { run_cli = function(self, args, path)\n"
                  "  print(#args, args[1], path:match('script.lua$'))\n"
                  "  return 1 end }\n")
        code, out, _ = run(["run", "{script}", "a1", "a2"], script)
        self.assertEqual(code, 1)
        self.assertEqual(out, "2\ta1\tscript.lua\n")

    def test_script_arguments(self):
        code, out, _ = run(["run", "{script}", "x", "y"],
                           "local a, b = ...\nprint(a, b, arg[1], arg[2], arg[0]:match('script.lua$'))")
        self.assertEqual((code, out), (0, "x\ty\tx\ty\tscript.lua\n"))

    def test_script_error_is_2_with_file_line_and_traceback(self):
        script = "local function inner()\n  error('it broke')\nend\ninner()\n"
        code, out, err = run(["run", "{script}"], script)
        self.assertEqual(code, 2)
        self.assertRegex(err, r"script\.lua:2: it broke")
        self.assertIn("stack traceback:", err)
        self.assertRegex(err, r"script\.lua:4: in ")

    def test_error_in_a_task_waited_for_is_2(self):
        script = ("local sl = require 'sluice'\n"
                  "local t = sl.spawn(function() sl.sleep(0.01); error('task broke') end)\n"
                  "t:wait()\n")
        code, _, err = run(["run", "{script}"], script)
        self.assertEqual(code, 2)
        self.assertRegex(err, r"script\.lua:2: task broke")

    def test_syntax_error_is_2_with_file_line(self):
        code, _, err = run(["run", "{script}"], "local x = = 1\n")
        self.assertEqual(code, 2)
        self.assertRegex(err, r"script\.lua:1: unexpected symbol near '='")

    def test_missing_script_is_2(self):
        code, _, err = run(["run", "/no/such/script.lua"])
        self.assertEqual(code, 2)
        self.assertIn("cannot open script '/no/such/script.lua'", err)

    def test_usage_errors_are_2(self):
        self.assertEqual(run([])[0], 2)
        code, _, err = run(["frobnicate"])
        self.assertEqual(code, 2)
        self.assertIn("unknown command 'frobnicate'", err)
        code, _, err = run(["run"])
        self.assertEqual(code, 2)
        self.assertIn("missing SCRIPT.lua", err)

    def test_deadlock_is_reported_and_is_2(self):
        script = ("local sl = require 'sluice'\n"
                  "local q = sl.queue(1)\n"
                  "local t = sl.spawn(function() q:get() end)\n"
                  "t.name = 'consumer'\n"
                  "q:get()\n")
        code, _, err = run(["run", "{script}"], script)
        self.assertEqual(code, 2)
        self.assertIn("deadlock", err)
        self.assertIn("main: waiting in queue:get", err)
        self.assertIn("consumer: waiting in queue:get", err)

    def test_unobserved_task_failure_is_reported(self):
        script = ("local sl = require 'sluice'\n"
                  "sl.spawn(function() error('lonely failure') end)\n"
                  "sl.sleep(0.01)\n")
        code, _, err = run(["run", "{script}"], script)
        self.assertIn("failed and nobody waited for it", err)
        self.assertIn("lonely failure", err)
        self.assertEqual(code, 1)

    def test_background_tasks_finish_before_exit(self):
        script = ("local sl = require 'sluice'\n"
                  "sl.spawn(function() sl.sleep(0.05); print('late') end)\n"
                  "print('main done')\n")
        code, out, _ = run(["run", "{script}"], script)
        self.assertEqual((code, out), (0, "main done\nlate\n"))


class HelpAndVersion(unittest.TestCase):
    def test_version(self):
        code, out, _ = run(["version"])
        self.assertEqual(code, 0)
        self.assertRegex(out, r"^sluice \d+\.\d+\.\d+ \(Lua 5\.4\)\n$")

    @staticmethod
    def commands_in_tree():
        """Every command, as the source tree has them: run and repl (cli.lua), each module of
        lua/sluice/app/cmd/ with a USAGE, version and help."""
        d = os.path.join(SOURCE, "lua", "sluice", "app", "cmd")
        mods = sorted(f[:-4] for f in os.listdir(d)
                      if f.endswith(".lua") and "M.USAGE" in open(os.path.join(d, f)).read())
        return ["run", "repl"] + mods + ["version", "help"]

    def test_help_lists_every_command(self):
        expected = self.commands_in_tree()
        self.assertIn("jobs", expected)
        self.assertIn("serve", expected)
        for args in (["--help"], ["help"], ["-h"]):
            code, out, _ = run(args)
            self.assertEqual(code, 0)
            listed = re.findall(r"^  (\w+) +\S", out.split("commands:\n", 1)[1], re.M)
            self.assertEqual(listed, expected, out)
        code, _, err = run([])
        self.assertEqual(code, 2)
        self.assertIn("  jobs ", err)

    def test_help_of_each_command(self):
        for name in self.commands_in_tree():
            code, out, err = run(["help", name])
            self.assertEqual(code, 0, err)
            self.assertTrue(out.startswith("usage: sluice " + name), out)
            # the one-line summary in the list is this text's first sentence
            _, listing, _ = run(["--help"])
            summary = re.search(r"^  %s +(.*)$" % name, listing, re.M).group(1)
            body = " ".join(out.split("\n\n", 1)[1].split())
            self.assertTrue(body.startswith(summary), (summary, body[:120]))
        code, out, _ = run(["help", "run"])
        self.assertIn("--set KEY=VALUE", out)  # the pipeline options come with it
        self.assertEqual(run(["run", "--help"])[0], 0)

    def test_unknown_command_or_topic_is_one_line_with_a_suggestion(self):
        code, _, err = run(["help", "nope"])
        self.assertEqual(code, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("no command 'nope'", err)
        code, _, err = run(["jbos"])
        self.assertEqual(code, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("unknown command 'jbos' (did you mean 'jobs'?)", err)


class Interrupt(unittest.TestCase):
    def spawn(self, script):
        self.dir = tempfile.TemporaryDirectory()
        path = os.path.join(self.dir.name, "script.lua")
        with open(path, "w") as f:
            f.write(script)
        return subprocess.Popen([BIN, "run", path], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def tearDown(self):
        self.dir.cleanup()

    def test_first_sigint_cancels_the_main_task_gracefully(self):
        p = self.spawn("local sl = require 'sluice'\n"
                       "print('ready'); io.stdout:flush()\n"
                       "local ok, err = pcall(sl.sleep, 60)\n"
                       "print('main saw', tostring(err)); io.stdout:flush()\n"
                       "sl.sleep(60)\n")
        wait_for_line(p, "ready", time.monotonic() + 30)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 130)
        self.assertIn("main saw\tcancelled", out)
        self.assertIn("interrupted; stopping", err)
        self.assertLess(time.monotonic() - t0, 20)

    def test_second_sigint_stops_at_once(self):
        # The graceful handler does not stop anything: only the second SIGINT ends the run.
        p = self.spawn("local sl = require 'sluice'\n"
                       "local cli = require 'sluice.app.cli'\n"
                       "cli.on_interrupt(function() print('graceful stop requested'); io.stdout:flush() end)\n"
                       "print('ready'); io.stdout:flush()\n"
                       "sl.sleep(60)\n"
                       "print('never')\n")
        wait_for_line(p, "ready", time.monotonic() + 30)
        p.send_signal(signal.SIGINT)
        wait_for_line(p, "graceful stop requested", time.monotonic() + 30)
        self.assertIsNone(p.poll(), "the first SIGINT must not stop this run")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 130)
        self.assertIn("interrupted twice, stopping now", err)
        self.assertNotIn("never", out)

    def test_sigint_kills_a_running_subprocess(self):
        p = self.spawn("local sl = require 'sluice'\n"
                       "print('ready'); io.stdout:flush()\n"
                       "sl.exec({'sleep', '60'})\n")
        wait_for_line(p, "ready", time.monotonic() + 30)
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=30)
        self.assertEqual(p.returncode, 130)

    def test_sigterm_also_stops_gracefully(self):
        p = self.spawn("local sl = require 'sluice'\n"
                       "print('ready'); io.stdout:flush()\n"
                       "sl.sleep(60)\n")
        wait_for_line(p, "ready", time.monotonic() + 30)
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
        self.assertEqual(p.returncode, 130)


class ReplWithoutTerminal(unittest.TestCase):
    def test_piped_lines_run(self):
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ, SLUICE_HISTORY=os.path.join(d, "h"))
            p = subprocess.run([BIN, "repl"], input="x = 2\nsluice.sleep(0.05)\nprint(x * 21)\n=x\n",
                               capture_output=True, text=True, timeout=60, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("42\n", p.stdout)
        self.assertIn("2\n", p.stdout)

    def test_unreadable_stdin_is_a_clear_error(self):
        with open(os.devnull) as null:
            p = subprocess.run([BIN, "repl"], stdin=null, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 2)
        self.assertIn("sluice repl: cannot read input from stdin", p.stderr)


class Install(unittest.TestCase):
    def test_installed_binary_finds_its_modules(self):
        with tempfile.TemporaryDirectory() as prefix:
            subprocess.run(["cmake", "--install", BUILD, "--prefix", prefix], check=True,
                           capture_output=True, timeout=120)
            exe = os.path.join(prefix, "bin", "sluice")
            self.assertTrue(os.access(exe, os.X_OK))
            script = os.path.join(prefix, "tiny.lua")
            with open(script, "w") as f:
                f.write("local sl = require 'sluice'\n"
                        "local core = require 'sluice.core.core'\n"
                        "local q = sl.queue(1)\n"
                        "sl.spawn(function() q:put(require('cjson').encode({a = 1})) end)\n"
                        "print(q:get())\n"
                        "print(core.lua_dir)\n")
            env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
            p = subprocess.run([exe, "run", script], capture_output=True, text=True,
                               timeout=60, env=env, cwd=prefix)
            self.assertEqual(p.returncode, 0, p.stderr)
            lines = p.stdout.splitlines()
            self.assertEqual(lines[0], '{"a":1}')
            # the modules come from the install, not from the source tree
            self.assertEqual(os.path.realpath(lines[1]),
                             os.path.realpath(os.path.join(prefix, "share", "sluice", "lua")))
            # the manual page is installed, made of the same texts as `sluice help CMD`
            page = os.path.join(prefix, "share", "man", "man1", "sluice.1")
            self.assertTrue(os.path.isfile(page))
            shown = subprocess.run(["man", "-l", page], capture_output=True, text=True, timeout=60,
                                   env=dict(env, MANWIDTH="200", LANG="C", MAN_KEEP_FORMATTING="0")).stdout
            shown = re.sub(r".\x08", "", shown)
            shown_lines = {" ".join(l.split()) for l in shown.splitlines()}
            for name in HelpAndVersion.commands_in_tree():
                p = subprocess.run([exe, "help", name], capture_output=True, text=True, timeout=60, env=env, cwd=prefix)
                for line in p.stdout.splitlines():
                    if line.strip():
                        self.assertIn(" ".join(line.split()), shown_lines, "%s: %r" % (name, line))


if __name__ == "__main__":
    unittest.main(verbosity=2)
