"""Baseline for bench/graph_overhead.lua: the same 3-stage x 4-worker pipeline written the
usual way with asyncio.Queue (bounded queues of QUEUE items, default 8, 4 worker tasks per
stage, trivial work; the last stage keeps its results, as the DSL's last stage does).
Timed in-process around the pipeline run (like the Lua side: no interpreter start-up).
Usage: graph_overhead_asyncio.py [N] [QUEUE] [RUNS]
Runs the pipeline RUNS times (default 1) in this process and prints one line for the last:
items_per_second items_per_cpu_second. (The Lua sides run twice the same way, so that both
are measured with a heap warmed by one run.)"""
import asyncio
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
WORKERS = 4
QUEUE = int(sys.argv[2]) if len(sys.argv) > 2 else 8
RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 1
STOP = object()


async def stage(inq, outq, fn):
    while True:
        item = await inq.get()
        if item is STOP:
            await inq.put(STOP)  # let the sibling workers see it too
            return
        out = fn(item)
        if outq is None:
            results.append(out["data"])  # the last stage keeps its results
        else:
            await outq.put(out)


results = []


async def main(last):
    results.clear()
    q = [asyncio.Queue(QUEUE) for _ in range(3)]

    async def source():
        for i in range(N):
            await q[0].put({"key": "k", "seq": i, "data": i})
        await q[0].put(STOP)

    def f(item):
        return {"key": item["key"], "seq": item["seq"], "data": item["data"] + 1}

    t0, c0 = time.perf_counter(), time.process_time()
    src = asyncio.create_task(source())
    groups = []
    for s in range(3):
        ws = [asyncio.create_task(stage(q[s], q[s + 1] if s < 2 else None, f)) for _ in range(WORKERS)]
        groups.append(ws)
    for s, ws in enumerate(groups):
        await asyncio.gather(*ws)
        if s < 2:
            await q[s + 1].put(STOP)
    await src
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    assert len(results) == N and sum(results) == sum(range(N)) + 3 * N
    if last:
        print(f"{N / dt:.1f} {N / dc:.1f}")


for run in range(RUNS):
    asyncio.run(main(run == RUNS - 1))
