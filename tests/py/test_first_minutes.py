# labels: slow
# The first five minutes of a new user (issue 17), through the real binary: the preflight
# refuses a run with one line per problem and exit status 2 before anything is started or
# written (unknown providers, missing credentials, unknown settings with did-you-mean,
# missing inputs); script errors name the user's file:line without the engine's frames
# (SLUICE_DEBUG=1 shows them); failures name the thing once; outputs keep the input's name.
import json
import os
import shutil
import subprocess
import tempfile
import unittest

SOURCE = os.environ.get("SLUICE_SOURCE_DIR", os.getcwd())
BUILD = os.environ.get("SLUICE_BUILD_DIR", os.path.join(SOURCE, "build"))
BIN = os.environ.get("SLUICE_BIN", os.path.join(BUILD, "sluice"))
PRE = os.path.join(SOURCE, "tests", "py", "preflight_pipeline.lua")
LECTURE = os.path.join(SOURCE, "pipelines", "lecture.lua")
# provider settings from the developer's environment would change what the preflight sees
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not (k.startswith("OPENAI_") or k.startswith("GEMINI_") or k.startswith("CLOVA_")
                     or k.startswith("SLUICE_PROVIDER") or k == "SLUICE_DEBUG")}
CLEAN_ENV["SLUICE_PROGRESS"] = "off"


def sluice(args, env=None, cwd=None, timeout=120):
    e = dict(CLEAN_ENV)
    e.update(env or {})
    p = subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="sluice-first-")
        self.input = os.path.join(self.tmp, "talk.txt")
        with open(self.input, "w") as f:
            f.write("hello\n")
        self.out = os.path.join(self.tmp, "out")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def pre(self, *extra, inputs=None, env=None):
        return sluice(["run", PRE] + (inputs if inputs is not None else [self.input]) +
                      ["--out", self.out] + list(extra), env=env)

    def refused(self, *extra, inputs=None, env=None):
        """Runs the preflight pipeline expecting a refusal: exit 2, nothing written. Returns
        the lines of stderr."""
        code, out, err = self.pre(*extra, inputs=inputs, env=env)
        self.assertEqual(code, 2, err)
        self.assertFalse(os.path.exists(self.out), "the output folder was made: " + err)
        self.assertEqual(out, "")
        return err.splitlines()

    def ran(self, *extra, inputs=None, env=None):
        code, _, err = self.pre(*extra, inputs=inputs, env=env)
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.exists(os.path.join(self.out, "ran-talk.txt")), err)
        return err


class Preflight(Base):
    def test_a_plain_run_passes(self):
        self.ran()

    def test_unknown_provider(self):
        lines = self.refused("--set", "providers.stt=whisperx")
        self.assertEqual(lines, ["sluice run: providers.stt: unknown provider 'whisperx' for role 'stt' "
                                 "(providers for stt: clova, exec, openai, sphinx)"])
        lines = self.refused("--set", "providers.stt=opnai")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("unknown provider 'opnai' for role 'stt' (did you mean 'openai'?)", lines[0])
        # a provider that exists but cannot do the role
        lines = self.refused("--set", "providers.stt=tesseract")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("provider 'tesseract' cannot do 'stt'", lines[0])

    def test_missing_credentials_name_the_variable(self):
        lines = self.refused("--set", "providers.stt=openai")
        self.assertEqual(lines, ["sluice run: providers.stt: openai needs an API key: set OPENAI_API_KEY "
                                 "(or openai.api_key in a --config file)"])
        lines = self.refused("--set", "providers.stt=clova")
        self.assertEqual(lines, [
            "sluice run: providers.stt: clova needs an invoke URL: set CLOVA_SPEECH_INVOKE_URL "
            "(or clova.invoke_url in a --config file)",
            "sluice run: providers.stt: clova needs a secret: set CLOVA_SPEECH_SECRET "
            "(or clova.secret in a --config file)"])
        # with the variable set the preflight lets the run go (the model list of a host that
        # cannot be reached is a warning, not a refusal)
        err = self.ran("--set", "providers.stt=openai",
                       env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "https://api.openai.com.invalid/v1"})
        self.assertIn("warning: cannot check openai's models", err)
        # a local OpenAI-compatible server needs no key
        shutil.rmtree(self.out)
        self.ran("--set", "providers.stt=openai", "--set", "openai.base_url=http://127.0.0.1:9/v1")

    def test_unknown_settings_one_line_each_with_did_you_mean(self):
        lines = self.refused("--set", "nosuchkey=1", "--set", "fusoin=nearest", "--set", "stages.sst.workers=2",
                             "--set", "stages.stt.wrokers=3", "--set", "providers.sst=sphinx")
        self.assertEqual(lines, [
            "sluice run: --set nosuchkey=1: unknown setting 'nosuchkey' (see --help for the settings; "
            "--set strict=false accepts any key)",
            "sluice run: --set fusoin=nearest: unknown setting 'fusoin' (did you mean 'fusion'?)",
            "sluice run: --set stages.sst.workers=2: unknown setting 'stages.sst' (did you mean 'stages.stt'?)",
            "sluice run: --set stages.stt.wrokers=3: unknown setting 'stages.stt.wrokers' "
            "(did you mean 'stages.stt.workers'?)",
            "sluice run: --set providers.sst=sphinx: unknown setting 'providers.sst' (did you mean 'providers.stt'?)",
        ])

    def test_config_file_keys_are_checked_too(self):
        cfg = os.path.join(self.tmp, "c.json")
        with open(cfg, "w") as f:
            json.dump({"windw": 3, "window": 20, "stages": {"stt": {"workers": 2}}}, f)
        lines = self.refused("--config", cfg)
        self.assertEqual(lines, ["sluice run: config file %s: unknown setting 'windw' (did you mean 'window'?)" % cfg])

    def test_known_settings_and_strict_false_pass(self):
        # declared without a default, stage options and params, a provider's own section
        self.ran("--set", "keep=true", "--set", "stages.stt.workers=2", "--set", "stages.stt.params.x=1",
                 "--set", "sphinx.anything=1", "--set", "window=10")
        shutil.rmtree(self.out)
        self.ran("--set", "strict=false", "--set", "nosuchkey=1")

    def test_stage_option_values_are_checked_before_the_run(self):
        lines = self.refused("--set", "stages.stt.workers=0")
        self.assertEqual(lines, ["sluice run: pipeline 'pre': stage 'stt': option 'workers' must be a "
                                 "positive integer (got 0)"])

    def test_inputs_must_be_readable_files_urls_are_left_to_the_run(self):
        missing = os.path.join(self.tmp, "nope.mp4")
        lines = self.refused(inputs=[self.input, missing, self.tmp])
        self.assertEqual(lines, ["sluice run: input %s: no such file" % missing,
                                 "sluice run: input %s: not a file" % self.tmp])
        code, _, err = self.pre(inputs=["http://127.0.0.1:9/x.mp4"])
        self.assertNotEqual(code, 2, err)
        self.assertNotIn("sluice run: input", err)

    def test_every_problem_is_reported_at_once(self):
        lines = self.refused("--set", "providers.stt=clova", "--set", "fusoin=x",
                             inputs=[os.path.join(self.tmp, "missing.wav")])
        self.assertEqual([l.split(":")[1].strip() for l in lines],
                         ["--set fusoin=x", "providers.stt", "providers.stt",
                          "input %s" % os.path.join(self.tmp, "missing.wav")])

    def test_the_lecture_pipeline_refuses_the_mistakes_of_the_issue(self):
        sample = os.path.join(self.tmp, "talk.mp4")
        shutil.copy(self.input, sample)  # the preflight does not read it
        for args, want in (
            (["--set", "providers.stt=whisperx"], "providers.stt: unknown provider 'whisperx'"),
            (["--set", "providers.stt=openai"], "openai needs an API key: set OPENAI_API_KEY"),
            (["--set", "nosuchkey=1"], "unknown setting 'nosuchkey'"),
        ):
            code, _, err = sluice(["run", LECTURE, sample, "--out", self.out] + args)
            self.assertEqual(code, 2, err)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn(want, err)
            self.assertFalse(os.path.exists(self.out))
        code, _, err = sluice(["run", LECTURE, "/x.mp4", "--out", self.out])
        self.assertEqual((code, err), (2, "sluice run: input /x.mp4: no such file\n"))


class Errors(Base):
    def script(self, text, name="bad.lua"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_graph_error_names_the_script_line_and_no_engine_frame(self):
        path = self.script('local sl = require "sluice"\n'
                           'return sl.pipeline "bad" {\n'
                           '  sources = { files = sl.inputs() },\n'
                           '  stages = { a = { from = "nope", run = function(x) return x end } },\n'
                           '}\n')
        code, _, err = sluice(["run", path, self.input])
        self.assertEqual(code, 2)
        self.assertEqual(err, "sluice: %s:4: pipeline 'bad': stage 'a': option 'from' names unknown stage "
                              "'nope' (known: a, files)\n" % path)
        code, _, err = sluice(["run", path, self.input], env={"SLUICE_DEBUG": "1"})
        self.assertEqual(code, 2)
        self.assertIn("stack traceback:", err)
        self.assertIn("sluice/graph/dsl.lua", err)

    def test_error_inside_a_library_call_names_the_script_frames_only(self):
        path = self.script('local suggest = require "sluice.runtime.suggest"\n'
                           'local function f() local d = suggest.distance(nil, "a") return d end\n'
                           'f()\n', "lib.lua")
        code, _, err = sluice(["run", path])
        self.assertEqual(code, 2)
        lines = err.splitlines()
        self.assertTrue(lines[0].startswith("sluice: %s:2: attempt to get length of a nil value" % path), err)
        self.assertEqual(lines[1:], ["stack traceback:", "\t%s:2: in local 'f'" % path, "\t%s:3: in main chunk" % path])
        self.assertNotIn("lua/sluice/", err)

    def test_item_failures_name_the_thing_once_without_engine_places(self):
        bad = os.path.join(self.tmp, "bad.txt")
        with open(bad, "w") as f:
            f.write("bad provider\n")
        code, _, err = self.pre(inputs=[bad])
        self.assertEqual(code, 1, err)
        failed = [l for l in err.splitlines() if l.startswith("  stt ")]
        self.assertEqual(failed, ["  stt bad.txt#1: unknown provider 'nope' for role 'stt' "
                                  "(providers for stt: clova, exec, openai, sphinx)"])
        self.assertNotIn("lua/sluice/", err)
        code, _, err = self.pre(inputs=[bad], env={"SLUICE_DEBUG": "1"})
        self.assertIn("lua/sluice/blocks/stages.lua:", err)

    def test_a_broken_video_names_its_path_once_per_failure(self):
        broken = os.path.join(self.tmp, "broken.mp4")
        with open(broken, "w") as f:
            f.write("this is not a video\n")
        code, _, err = sluice(["run", LECTURE, broken, "--out", self.out, "--quiet"])
        self.assertEqual(code, 1, err)
        failed = sorted(l.strip() for l in err.splitlines() if l.startswith("  "))
        self.assertEqual(len(failed), 2, err)
        self.assertTrue(failed[0].startswith("audio broken.mp4#1: audio_chunks %s: " % broken), failed)
        self.assertTrue(failed[1].startswith("frames broken.mp4#1: capture %s: " % broken), failed)
        for line in failed:
            self.assertEqual(line.count(broken), 1, line)


class Names(Base):
    def test_video_filter_keeps_the_input_name(self):
        src = os.path.join(BUILD, "sample", "filter", "bottle.mp4")
        r = subprocess.run(["flock", os.path.join(BUILD, "sample.lock"), BIN, "run",
                            os.path.join(SOURCE, "scripts", "make_sample.lua"), os.path.join(BUILD, "sample"),
                            "--only", "filter"], cwd=SOURCE, capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        video = os.path.join(self.tmp, "book_copy.mkv")
        shutil.copy(src, video)
        code, _, err = sluice(["run", os.path.join(SOURCE, "pipelines", "video_filter.lua"), video,
                               "--out", self.out, "--set", "every=2", "--quiet"], timeout=600)
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.isdir(os.path.join(self.out, "frames", "book_copy")), os.listdir(self.out))
        self.assertTrue(os.path.isdir(os.path.join(self.out, "kept", "book_copy")))
        with open(os.path.join(self.out, "manifest.json")) as f:
            m = json.load(f)
        self.assertEqual({fr["video"] for fr in m["frames"]}, {"book_copy"})


if __name__ == "__main__":
    unittest.main(verbosity=2)
