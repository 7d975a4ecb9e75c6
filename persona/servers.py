"""Whether the production profile's servers answer: what the production tests and the benchmarks check before
using them."""

from __future__ import annotations


def unreachable(redis_address: str, registry_url: str) -> list[str]:
    """A line per server that does not answer a real request (PING; SELECT 1), naming it and why."""
    import psycopg
    import redis
    from sqlalchemy.engine import make_url

    down = []
    host, _, port = redis_address.split(",")[0].partition(":")
    try:
        redis.Redis(host=host, port=int(port or 6379), socket_connect_timeout=2, socket_timeout=2).ping()
    except (redis.RedisError, OSError) as exc:
        down.append(f"Redis at {redis_address} ({exc})")
    url = make_url(registry_url)
    try:
        psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                        connect_timeout=2).close()
    except psycopg.Error as exc:
        down.append(f"PostgreSQL at {url.render_as_string(hide_password=True)} ({str(exc).strip()})")
    return down
