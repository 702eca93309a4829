"""The health port: ``/healthz`` (alive), ``/readyz`` (lease held, first reconcile done),
and JSON status documents other issues add (e.g. peers) — a tiny asyncio HTTP/1.0 server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from overlayd.errors import ConfigError

log = logging.getLogger("overlayd.health")

Handler = Callable[[], tuple[int, Any]]


class HealthServer:
    """Serves GET requests for registered paths; each handler returns (status, JSON body)."""

    def __init__(self, host: str, port: int, handlers: dict[str, Handler]) -> None:
        self._host, self._port, self._handlers = host, port, handlers
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self._host, self._port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on health port {self._host}:{self._port}: {exc.strerror}",
                hint="is another overlayd running in this network namespace? see --healthz-port",
            ) from None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request.decode("latin-1").split()
            while (await asyncio.wait_for(reader.readline(), timeout=5)).strip():
                pass  # headers are not needed
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            handler = self._handlers.get(path)
            if handler is None:
                status, body = 404, {"error": f"no such path {path}"}
            else:
                status, body = handler()
            payload = (json.dumps(body, sort_keys=True, indent=1) + "\n").encode()
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(status, "")
            writer.write(
                f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError) as exc:
            log.debug("health request failed: %s", exc)
        finally:
            writer.close()
