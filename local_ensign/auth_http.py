"""The authentication endpoint pyensign talks to: a subset of Ensign's Quarterdeck.

``POST /v1/authenticate`` trades a client id and secret for an access/refresh token
pair; ``POST /v1/refresh`` trades a refresh token for a new pair; ``GET /v1/status``
answers ``{"status": "ok"}``. pyensign posts JSON under a form Content-Type, so the
body is read as JSON whatever the header says.

pyensign calls this endpoint with a *blocking* request from inside its own event
loop, so the endpoint must never share that loop: it runs in its own thread.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .catalog import Catalog
from .credentials import authenticate
from .tokens import InvalidToken, TokenIssuer

log = logging.getLogger("local_ensign.auth")

MAX_BODY = 64 * 1024


class AuthEndpoint:
    """Serves the auth API on ``host:port`` from a background thread."""

    def __init__(self, host: str, port: int, catalog: Catalog, issuer: TokenIssuer) -> None:
        handler = type("Handler", (_AuthHandler,), {"catalog": catalog, "issuer": issuer})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="auth-endpoint", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _AuthHandler(BaseHTTPRequestHandler):
    catalog: Catalog
    issuer: TokenIssuer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/status":
            self._reply(HTTPStatus.OK, {"status": "ok"})
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"success": False, "error": "resource not found"})

    def do_POST(self) -> None:
        routes = {"/v1/authenticate": self._authenticate, "/v1/refresh": self._refresh}
        route = routes.get(self.path.rstrip("/"))
        if route is None:
            self._reply(HTTPStatus.NOT_FOUND, {"success": False, "error": "resource not found"})
            return
        body = self._json_body()
        if body is None:
            self.close_connection = True  # the body may be unread: don't reuse this connection
            self._reply(HTTPStatus.BAD_REQUEST, {"success": False, "error": "could not parse request"})
            return
        route(body)

    def _authenticate(self, body: dict) -> None:
        client_id, secret = body.get("client_id"), body.get("client_secret")
        if not isinstance(client_id, str) or not isinstance(secret, str) or not client_id or not secret:
            self._reply(HTTPStatus.BAD_REQUEST, {"success": False, "error": "missing credentials"})
            return
        self._issue(authenticate(self.catalog, client_id, secret))

    def _refresh(self, body: dict) -> None:
        token = body.get("refresh_token")
        if not isinstance(token, str) or not token:
            self._reply(HTTPStatus.BAD_REQUEST, {"success": False, "error": "missing refresh token"})
            return
        try:
            client_id = self.issuer.verify_refresh(token)
        except InvalidToken:
            self._reply(HTTPStatus.FORBIDDEN, {"success": False, "error": "invalid credentials"})
            return
        self._issue(self.catalog.find_api_key(client_id))

    def _issue(self, api_key) -> None:
        if api_key is None:
            self._reply(HTTPStatus.FORBIDDEN, {"success": False, "error": "invalid credentials"})
            return
        access, refresh = self.issuer.issue(api_key)
        self._reply(HTTPStatus.OK, {"access_token": access, "refresh_token": refresh})

    def _json_body(self) -> dict | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        if not 0 < length <= MAX_BODY:
            return None
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    def _reply(self, status: HTTPStatus, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
