# bench/runtime_asyncio.py: the baseline for bench/runtime.lua, same shape in Python asyncio:
# items through 3 stages x 4 worker tasks joined by asyncio.Queue(maxsize=64).
# Usage: /usr/bin/python3 bench/runtime_asyncio.py [ITEMS=200000]
# Prints one line: "asyncio items=N seconds=S items_per_s=R cpu_s=C".
import asyncio
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
STAGES, WORKERS, CAP = 3, 4, 64
DONE = object()  # end of stream; asyncio.Queue has no close()


async def main():
    queues = [asyncio.Queue(maxsize=CAP) for _ in range(STAGES + 1)]

    async def source():
        q = queues[0]
        for i in range(1, N + 1):
            await q.put({"id": i, "x": 0})
        for _ in range(WORKERS):
            await q.put(DONE)

    async def worker(inq, outq):
        while True:
            item = await inq.get()
            if item is DONE:
                return
            item["x"] += 1
            await outq.put(item)

    async def stage(s):
        inq, outq = queues[s], queues[s + 1]
        await asyncio.gather(*(worker(inq, outq) for _ in range(WORKERS)))
        for _ in range(WORKERS if s + 1 < STAGES else 1):
            await outq.put(DONE)

    result = {"count": 0, "sum": 0}

    async def sink():
        q = queues[STAGES]
        while True:
            item = await q.get()
            if item is DONE:
                return
            result["count"] += 1
            result["sum"] += item["x"]

    await asyncio.gather(source(), sink(), *(stage(s) for s in range(STAGES)))
    return result


cpu0 = time.process_time()
t0 = time.monotonic()
r = asyncio.run(main())
dt = time.monotonic() - t0
cpu = time.process_time() - cpu0
assert r["count"] == N and r["sum"] == N * STAGES, "lost or repeated items"
print("asyncio items=%d seconds=%.3f items_per_s=%.0f cpu_s=%.3f" % (N, dt, N / dt, cpu))
