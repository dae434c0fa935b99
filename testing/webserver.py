"""An ASGI app served by a real uvicorn on a free loopback port, in a thread of the test process (so the
test can drive the app's source and read its audit records while a browser talks HTTP to it)."""

from __future__ import annotations

import threading
import time

from gasguard.testing.mosquitto import free_port


class WebServer:
    def __init__(self, app, port: int | None = None):
        import uvicorn
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "WebServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn did not start on port {self.port} within 10 s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)
