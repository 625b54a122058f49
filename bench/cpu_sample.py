#!/usr/bin/python3
"""A top-style sampler for bench/pipelines: runs a command and looks at its process tree
every 0.1 s (its own threads and those of every process it starts, e.g. model workers and
ffmpeg), from /proc, as `top -H` would.

    python3 bench/cpu_sample.py OUT -- CMD [ARG...]

Runs CMD (stdin, stdout and stderr are inherited), waits for it, writes one line to OUT:

    wall user sys main_cpu max_running over_share max_busy busy_over_share

  wall, user, sys   seconds (user and sys of CMD and all its waited-for descendants)
  main_cpu          CPU use during the main phase (the middle 80% of the wall time), in
                    percent of one core: 200 = both cores of a 2-core machine busy
  max_running       the most threads of the tree runnable at once (state R: on a core or
                    waiting for one) in any sample
  over_share        the share of samples (percent) with more runnable threads than cores + 1
  max_busy          the most threads of the tree that each used at least half a core over one
                    sampling interval (CPU-bound threads; a thread woken for an instant, e.g.
                    to look at a condition variable, is runnable but not busy)
  busy_over_share   the share of samples with more busy threads than cores + 1

and exits with CMD's status. OUT.over gets, for the samples over cores + 1, how often each set
of runnable threads (by name, as top -H shows them) was seen, most frequent first. A sample reads /proc/PID/task/TID/stat of each process whose
parent chain leads to CMD; a thread's CPU time between two samples is utime + stime.
"""
import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
PERIOD = 0.1


def stat_fields(path):
    with open(path, "rb") as f:
        s = f.read().decode("latin-1")
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    rest = s[s.rindex(")") + 2:].split()
    return rest  # rest[0] = state (field 3), rest[1] = ppid, rest[11] = utime, rest[12] = stime


def tree(root):
    """The pids of root and its descendants (a snapshot of /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(stat_fields("/proc/%s/stat" % d)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def thread_name(pid, tid):
    try:
        with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
            return f.read().strip()
    except OSError:
        return "?"


def sample(root):
    """(runnable threads, {tid: cpu ticks}, names of the runnable ones) of root's process tree."""
    running, ticks, names = 0, {}, []
    for pid in tree(root):
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tids:
            try:
                f = stat_fields("/proc/%d/task/%s/stat" % (pid, tid))
            except (OSError, ValueError, IndexError):
                continue
            if f[0] == "R":
                running += 1
                names.append(thread_name(pid, tid))
            ticks[int(tid)] = int(f[11]) + int(f[12])
    return running, ticks, names


def tid_busy(ticks):
    """Whether a thread's CPU ticks over one interval are at least half of it."""
    return ticks >= 0.5 * PERIOD * TICK


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: cpu_sample.py OUT -- CMD [ARG...]")
    out, cmd = sys.argv[1], sys.argv[3:]
    ncpu = os.cpu_count() or 1
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    samples = []  # (t, runnable, cpu seconds used since the previous sample, busy threads)
    prev = {}
    over_sets = {}
    status = None
    while status is None:
        time.sleep(PERIOD)
        running, ticks, names = sample(pid)
        if running > ncpu + 1:
            k = " + ".join(sorted(names))
            over_sets[k] = over_sets.get(k, 0) + 1
        deltas = [t - prev.get(tid, 0) for tid, t in ticks.items() if t >= prev.get(tid, 0)]
        busy = sum(1 for d in deltas if tid_busy(d)) if prev else 0
        prev = ticks
        samples.append((time.monotonic() - t0, running, sum(deltas) / TICK, busy))
        wpid, st, ru = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            status, usage = st, ru
    wall = time.monotonic() - t0
    lo, hi = 0.1 * wall, 0.9 * wall
    main_phase = [s for s in samples if lo <= s[0] <= hi]
    main_t = (main_phase[-1][0] - main_phase[0][0] + PERIOD) if main_phase else 0
    main_cpu = 100 * sum(s[2] for s in main_phase) / main_t if main_t > 0 else 0
    max_running = max((s[1] for s in samples), default=0)
    over = sum(1 for s in samples if s[1] > ncpu + 1)
    over_share = 100 * over / len(samples) if samples else 0
    max_busy = max((s[3] for s in samples), default=0)
    busy_over = 100 * sum(1 for s in samples if s[3] > ncpu + 1) / len(samples) if samples else 0
    with open(out, "w") as f:
        f.write("%.2f %.2f %.2f %.0f %d %.1f %d %.1f\n" % (wall, usage.ru_utime, usage.ru_stime, main_cpu,
                                                           max_running, over_share, max_busy, busy_over))
    with open(out + ".over", "w") as f:
        for k, n in sorted(over_sets.items(), key=lambda kv: -kv[1]):
            f.write("%d\t%s\n" % (n, k))
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
