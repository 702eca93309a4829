"""Hostile HTTP clients against a status port, run inside a test namespace (bounded).

``python http_attack.py HOST PORT`` prints one JSON document: the status of each oversize,
garbage and header-flood request (0: closed without an answer), how long each of 200
slowloris connections (a byte a second) stayed open, and how long real requests made
during the slowloris took.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request

OVERSIZE = b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
GARBAGE = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(256)) + b"\r\n\r\n"
HEADERS = b"GET /status HTTP/1.1\r\nHost: x\r\n" + b"X-Flood: y\r\n" * 500 + b"\r\n"
SLOW = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 60


async def exchange(host: str, port: int, raw: bytes) -> int:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return -1
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        return int(answer.split(b" ", 2)[1]) if answer else 0
    except (OSError, TimeoutError, ValueError, IndexError):
        return 0
    finally:
        writer.close()


async def loris(host: str, port: int, limit: float) -> float | None:
    """Seconds the server kept a byte-a-second connection open (None: past ``limit``)."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return 0.0
    t0 = time.monotonic()

    async def drip() -> None:
        for byte in SLOW:
            if writer.is_closing() or reader.at_eof():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(1)

    dripper = asyncio.create_task(drip())
    try:
        await asyncio.wait_for(reader.read(), limit)
        return time.monotonic() - t0
    except OSError:
        return time.monotonic() - t0
    except TimeoutError:
        return None
    finally:
        dripper.cancel()
        writer.close()


def timed_get(url: str) -> float:
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=5) as resp:
        resp.read()
    return time.monotonic() - t0


async def main(host: str, port: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, raw, count in (("oversize", OVERSIZE, 100), ("garbage", GARBAGE, 100),
                             ("headers", HEADERS, 50)):  # fmt: skip
        out[name] = [await exchange(host, port, raw) for _ in range(count)]
    clients = [asyncio.create_task(loris(host, port, 20)) for _ in range(200)]
    await asyncio.sleep(1.5)
    url = f"http://{host}:{port}/healthz"
    waits = []
    for _ in range(5):
        waits.append(await asyncio.to_thread(timed_get, url))
        await asyncio.sleep(0.5)
    out["waits"] = waits
    out["loris"] = await asyncio.gather(*clients)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2])))))
