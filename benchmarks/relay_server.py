"""Service B's web server in the relay benchmark: ``python -m benchmarks.relay_server PORT``.

Django's WSGI application (the http source view) behind wsgiref, one request at a time,
its database connection kept across requests (``CONN_MAX_AGE``). Several such processes
share the port (``SO_REUSEPORT``). Not ``runserver``: it starts a thread per connection,
so every request would open a database connection of its own, which is what it would
measure.
"""

from __future__ import annotations

import socket
import sys
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per request would be the benchmark's noise


class SharedPortServer(WSGIServer):
    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def main() -> None:
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
    port = int(sys.argv[1])
    with make_server(
        "127.0.0.1", port, application, server_class=SharedPortServer, handler_class=QuietHandler
    ) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
