#!/usr/bin/python3
"""bench/http_bench_aiohttp.py URL N CONCURRENCY [LATENCY]: the baseline for bench/http.sh.

The same workload as bench/http_bench.lua with Debian's python3-aiohttp client: N GET
requests with up to CONCURRENCY in flight (one ClientSession, TCPConnector(limit=CONCURRENCY)),
a repeating 1 ms asyncio timer for loop lag, CPU from getrusage around the request phase.
"""
import asyncio
import json
import resource
import sys
import time

import aiohttp


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def main(url, n, conc, latency=None):
    headers = {"X-Fake-Latency": latency} if latency is not None else None
    lags = []
    stop = False

    async def ticker():
        last = time.monotonic()
        while not stop:
            await asyncio.sleep(0.001)
            t = time.monotonic()
            lags.append(max(0.0, (t - last) - 0.001))
            last = t

    tick = asyncio.ensure_future(ticker())
    ok = failed = 0
    next_i = 0
    connector = aiohttp.TCPConnector(limit=conc, limit_per_host=conc)
    async with aiohttp.ClientSession(connector=connector) as session:
        c0, t0 = cpu(), time.monotonic()

        async def worker():
            nonlocal next_i, ok, failed
            while next_i < n:
                next_i += 1
                try:
                    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as r:
                        await r.read()
                        if r.status == 200:
                            ok += 1
                        else:
                            failed += 1
                except Exception:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(conc)))
        wall, used = time.monotonic() - t0, cpu() - c0
    stop = True
    await tick
    lags.sort()

    def pct(p):
        return lags[max(0, min(len(lags) - 1, int(len(lags) * p + 0.999) - 1))] if lags else 0

    print(json.dumps({"client": "aiohttp", "requests": n, "ok": ok, "failed": failed,
                      "seconds": round(wall, 4), "rps": round(n / wall, 1), "cpu": round(used, 4),
                      "cpu_per_1000": round(used * 1000 / n, 4), "lag_p50_ms": round(pct(0.5) * 1000, 3),
                      "lag_p99_ms": round(pct(0.99) * 1000, 3), "lag_max_ms": round(lags[-1] * 1000, 3) if lags else 0,
                      "ticks": len(lags)}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None))
