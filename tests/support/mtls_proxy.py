#!/usr/bin/env python3
"""An EHR front door for tests: HTTPS that requires a client certificate signed by a given CA
(mutual TLS) and a bearer token, in front of a plain-HTTP FHIR server (sekmet).

Usage: mtls_proxy.py CERT KEY CA TOKEN UPSTREAM
Prints the port it listens on (127.0.0.1, chosen by the OS), then serves until killed.
Each request is answered by the upstream, or 401 without the token. The client
certificate's subject CN is returned in the `X-Client-CN` header so tests can see who the
server believed it was talking to.
"""
import http.server
import ssl
import sys
import urllib.error
import urllib.request

cert, key, ca, token, upstream = sys.argv[1:6]


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def _forward(self):
        peer = self.connection.getpeercert() or {}
        cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), "")
        if self.headers.get("Authorization") != f"Bearer {token}":
            self._reply(401, {"Content-Type": "application/json"},
                        b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login"}]}', cn)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        req = urllib.request.Request(upstream + self.path, data=body, method=self.command)
        for h in ("Content-Type", "Accept", "If-Match", "If-None-Exist", "Prefer"):
            if self.headers.get(h):
                req.add_header(h, self.headers[h])
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                self._reply(r.status, r.headers, r.read(), cn)
        except urllib.error.HTTPError as e:
            self._reply(e.code, e.headers, e.read(), cn)

    def _reply(self, status, headers, body, cn):
        self.send_response(status)
        for h in ("Content-Type", "ETag", "Location", "Last-Modified"):
            if headers.get(h):
                self.send_header(h, headers[h])
        self.send_header("X-Client-CN", cn)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
ctx.verify_mode = ssl.CERT_REQUIRED
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
