"""The authentication endpoint pyensign talks to: a subset of Ensign's Quarterdeck.

``POST /v1/authenticate`` trades a client id and secret for an access/refresh token
pair; ``POST /v1/refresh`` trades a refresh token for a new pair; ``GET /v1/status``
answers ``{"status": "ok"}``. pyensign posts JSON under a form Content-Type, so the
body is read as JSON whatever the header says.

pyensign calls this endpoint with a *blocking* request from inside its own event
loop, so the endpoint must never share that loop: it runs in its own thread.

Every answer is JSON, errors included. A request the endpoint cannot read (a bad
Content-Length, a body that is not a UTF-8 JSON object, fields of the wrong type)
gets a 400; a connection that sends nothing for ``READ_TIMEOUT`` seconds is closed.

Given an ``ssl.SSLContext`` it serves HTTPS only. Each connection's TLS handshake
runs in that connection's own thread, under the same read timeout, so a client
that connects and stays silent holds up no one else.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .catalog import Catalog
from .credentials import authenticate
from .tokens import InvalidToken, TokenIssuer

log = logging.getLogger("local_ensign.auth")

MAX_BODY = 64 * 1024
READ_TIMEOUT = 5.0  # seconds a connection may stay silent before it is closed
LISTEN_BACKLOG = 1024  # connections the kernel queues while every handler is busy


class _AuthServer(ThreadingHTTPServer):
    """A thread per connection, and a listen queue long enough for bursts of clients.

    With socketserver's default queue of 5, the kernel resets connections as soon as
    more clients connect at once than the handlers accept in time.
    """

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def finish_request(self, request: socket.socket, client_address: tuple) -> None:
        """Serve one connection (in its own thread), after its TLS handshake if it is TLS.

        The listening socket accepts TLS connections without a handshake
        (``do_handshake_on_connect=False``), so a slow or silent client never blocks
        the accept loop; a handshake that fails or times out closes only this connection.
        """
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(READ_TIMEOUT)
            try:
                request.do_handshake()
            except OSError as err:  # ssl.SSLError and TimeoutError are OSErrors
                log.info("%s: TLS handshake failed: %s", client_address[0], err)
                return
        super().finish_request(request, client_address)


class AuthEndpoint:
    """Serves the auth API on ``host:port`` from a background thread, over TLS if given a context."""

    def __init__(
        self, host: str, port: int, catalog: Catalog, issuer: TokenIssuer, tls: ssl.SSLContext | None = None
    ) -> None:
        handler = type("Handler", (_AuthHandler,), {"catalog": catalog, "issuer": issuer})
        self._httpd = _AuthServer((host, port), handler)
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
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
    timeout = READ_TIMEOUT  # applied to the socket: a silent or stalled client times out

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
        client_id, secret = _text_field(body, "client_id"), _text_field(body, "client_secret")
        if client_id is None or secret is None:
            self._reply(HTTPStatus.BAD_REQUEST, {"success": False, "error": "missing credentials"})
            return
        self._issue(authenticate(self.catalog, client_id, secret))

    def _refresh(self, body: dict) -> None:
        token = _text_field(body, "refresh_token")
        if token is None:
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
        """The request body as a JSON object, or None if it is missing, cut short or not one."""
        length = self._body_length()
        if length is None:
            return None
        data = self.rfile.read(length)
        if len(data) != length:
            return None  # the client closed its side before sending the whole body
        try:
            body = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):  # RecursionError: deeply nested arrays or objects
            return None
        return body if isinstance(body, dict) else None

    def _body_length(self) -> int | None:
        """The one Content-Length, if it is a plain number from 1 to MAX_BODY; else None."""
        values = self.headers.get_all("Content-Length") or []
        if len(values) != 1 or "Transfer-Encoding" in self.headers:
            return None
        value = values[0].strip()
        if not (value.isascii() and value.isdigit()):
            return None
        length = int(value)
        return length if 0 < length <= MAX_BODY else None

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer requests http.server rejects (bad request line or headers) in JSON too."""
        status = HTTPStatus(code)
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        self._reply(status, {"success": False, "error": message or status.phrase.lower()})

    def _reply(self, status: HTTPStatus, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _text_field(body: dict, name: str) -> str | None:
    """``body[name]`` if it is a non-empty string that UTF-8 can encode, else None.

    JSON can carry lone surrogates (``"\\ud800"``), which no database or hash accepts.
    """
    value = body.get(name)
    if not isinstance(value, str) or not value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value
