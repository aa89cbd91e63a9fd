"""CPU per Redis command from an asyncio caller: the lean client (coordinator/store/resp_aio.py)
against redis-py's asyncio client, one command at a time and through a pipeline of one, on the
standard event loop and on uvloop.

    .venv/bin/python benchmarks/bench_redis_client.py [--url redis://127.0.0.1:6379/0] [--commands 20000]

Counts process CPU time (time.process_time), so the server's own time is not in the figures;
figures are in benchmarks/README.md (load section).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEY = "bench-redis-client:hash"


async def lean(url: str, count: int) -> float:
    from coordinator.store.resp_aio import RespPool

    pool = RespPool(url, max_connections=4, wait_s=10.0)
    await pool.execute([("HSET", KEY, "field", "value")])
    started = time.process_time()
    for _ in range(count):
        await pool.execute([("HGET", KEY, "field")])
    spent = time.process_time() - started
    await pool.aclose()
    return spent


async def redis_py(url: str, count: int) -> tuple[float, float]:
    import redis.asyncio

    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=4, decode_responses=True)
    client = redis.asyncio.Redis(connection_pool=pool)
    await client.hset(KEY, "field", "value")
    started = time.process_time()
    for _ in range(count):
        await client.hget(KEY, "field")
    single = time.process_time() - started
    started = time.process_time()
    for _ in range(count):
        pipe = client.pipeline(transaction=False)
        pipe.hget(KEY, "field")
        await pipe.execute()
    piped = time.process_time() - started
    await client.delete(KEY)
    await client.aclose()
    return single, piped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--commands", type=int, default=20000)
    args = parser.parse_args(argv)
    runners = [("asyncio", asyncio.run)]
    try:
        import uvloop

        runners.append(("uvloop", uvloop.run))
    except ImportError:
        print("uvloop is not installed: the standard loop only", file=sys.stderr)
    for name, run in runners:
        lean_s = run(lean(args.url, args.commands))
        single_s, piped_s = run(redis_py(args.url, args.commands))
        per = 1e6 / args.commands
        print(f"{name:8s} lean {lean_s * per:6.1f} us/command   redis-py {single_s * per:6.1f}   "
              f"redis-py pipeline of one {piped_s * per:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
