"""The Prometheus endpoint both daemons serve: a registry on a thread, stoppable."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from hivectl.core.config import MetricsSettings

log = logging.getLogger("hive.metrics")


@dataclass
class MetricsServer:
    """The running endpoint: its bound port, and how to stop it."""

    server: WSGIServer
    thread: threading.Thread
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics(
    registry: CollectorRegistry, settings: MetricsSettings, **log_fields: Any
) -> MetricsServer:
    """Serve `registry` at http://host:port/metrics (port 0: any free port)."""
    server, thread = start_http_server(settings.port, addr=settings.host, registry=registry)
    port = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", settings.host, port, extra=log_fields or None)
    return MetricsServer(server, thread, port)
