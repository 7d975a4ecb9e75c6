"""What the Redis server itself spends per feature value written in Feast's layout (issue 13's online-load goal).

The online load's goal (>= 50,000 persona-rows/s into Redis) is bounded by the server before any client work:
Redis runs commands on one thread. This measures the server's own CPU (`INFO cpu`, user + system, before and after)
for HSETs of generated personas as the bulk writer sends them (one hash per persona; `--views` HSETs of
`--features / --views` fields each, one per view, plus the view's timestamp field) and as one HSET of all views,
pipelined. Floor in the same run: the same number of PINGs pipelined (the server's cost per command, no data).

    .venv/bin/python bench/redis_server_cost.py [--personas 10000] [--features 156] [--views 5] [--db 15]

It writes to Redis database `--db` (flushed before and after; default 15, which persona does not use), at
`REDIS_URL` or 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import os

import redis

CHUNK = 1_000  # commands per pipeline round trip


def server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def write(client: redis.Redis, personas: int, groups: list[list[int]]) -> float:
    """Server CPU seconds for HSETs of every persona, one per group of feature numbers."""
    value = bytes(range(9))  # a Value protobuf of a double: tag byte and 8 bytes
    client.flushdb()
    before = server_cpu(client)
    for g, group in enumerate(groups):
        pipe = client.pipeline(transaction=False)
        for k in range(personas):
            fields = {b"f%d" % j: value for j in group}
            fields[b"_ts:%d" % g] = value
            pipe.hset(b"persona:%d" % k, mapping=fields)
            if (k + 1) % CHUNK == 0:
                pipe.execute()
                pipe = client.pipeline(transaction=False)
        pipe.execute()
    return server_cpu(client) - before


def pings(client: redis.Redis, count: int) -> float:
    before = server_cpu(client)
    pipe = client.pipeline(transaction=False)
    for k in range(count):
        pipe.ping()
        if (k + 1) % CHUNK == 0:
            pipe.execute()
            pipe = client.pipeline(transaction=False)
    pipe.execute()
    return server_cpu(client) - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=156)
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--db", type=int, default=15)
    args = parser.parse_args()
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"), db=args.db)
    server = client.info("server")
    encoding = client.config_get("hash-max-listpack-entries")
    per_view = [list(range(v, args.features, args.views)) for v in range(args.views)]
    try:
        views = write(client, args.personas, per_view)
        whole = write(client, args.personas, [list(range(args.features))])
        floor = pings(client, args.personas * args.views)
    finally:
        client.flushdb()
    n_fields = args.personas * args.features
    rows = args.personas * args.views
    print(f"Redis {server['redis_version']} (hash-max-listpack-entries {encoding.get('hash-max-listpack-entries')}), "
          f"{args.personas:,} personas x {args.features} features in {args.views} views")
    for name, cpu in (("one HSET per view", views), ("one HSET of all views", whole)):
        print(f"  {name:<22} server CPU {cpu:6.2f} s = {cpu / n_fields * 1e6:5.2f} us per field; "
              f"a whole server core would take {rows / cpu:,.0f} persona-rows/s")
    print(f"  floor: {rows:,} PINGs{'':<7} server CPU {floor:6.2f} s = {floor / rows * 1e6:5.2f} us per command")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
