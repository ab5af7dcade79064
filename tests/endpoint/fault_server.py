#!/usr/bin/env python3
"""Fault-injecting proxy in front of an OpenAI-compatible server (llama-cpp-python's), for tests.

    python3 tests/endpoint/fault_server.py --port P --upstream http://127.0.0.1:LLAMA_PORT --key SECRET

Python standard library only. Listens on 127.0.0.1. The first path segment picks the fault and the
rest of the path is the OpenAI path, so a client whose base_url is http://127.0.0.1:P/<mode>/v1
gets mode <mode> for POST /v1/chat/completions (and GET /v1/models, ...):

  ok       forward the request (method, body, Content-Type, Authorization) to the upstream and
           return its status, headers and body unchanged (buffered; hop-by-hop headers dropped)
  hang     read the request, then sleep --hang-seconds (600) without answering; only that
           connection's thread sleeps, the server keeps serving the others
  429once  per distinct request body: the first time 429 with `Retry-After: 1` and an OpenAI-style
           rate-limit error; every later time forward it (a client that retries gets the answer)
  500      500 with an OpenAI-style server_error, every time
  badjson  200, Content-Type application/json, truncated JSON `{"choices": [{"message": `
  close    read the request, then close the connection without sending a byte
  auth     forward if Authorization is exactly `Bearer <--key>`; else 401 whose message echoes the
           key the client sent, in full (OpenAI echoes part of it): the client must redact it
  slow     sleep 3 s, then forward

GET /_stats returns the number of requests received per mode, as JSON. Each request is logged to
stderr as `mode method path status`; headers (Authorization above all) are never logged.
"""
import argparse
import hashlib
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("ok", "hang", "429once", "500", "badjson", "close", "auth", "slow")
# Response headers not to copy from the upstream: hop-by-hop ones, and the framing, which this
# server sets itself (the body is re-sent whole, with its own Content-Length).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "content-length"}

ARGS = None
STATS = {m: 0 for m in MODES}
STATS_LOCK = threading.Lock()
SEEN_429 = set()  # sha256 of the bodies that already got their 429


def log(msg):
    sys.stderr.write("[fault %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients with a connection pool expect
    server_version = "fault_server/1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # own logging in handle_any(): the default would also log to stderr per request

    # -- helpers ---------------------------------------------------------------------------------
    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after the chunk
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def reply(self, status, body, headers=(), content_type="application/json", forwarded=False):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        if forwarded:  # the upstream's own Server and Date come with its headers
            self.send_response_only(status)
        else:
            self.send_response(status)
        has_ct = False
        for k, v in headers:
            has_ct = has_ct or k.lower() == "content-type"
            self.send_header(k, v)
        if not has_ct and content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()
        return status

    def forward(self, rest, body):
        url = ARGS.upstream.rstrip("/") + rest
        req = urllib.request.Request(url, data=body if self.command not in ("GET", "HEAD") else None,
                                     method=self.command)
        for h in ("Content-Type", "Authorization", "Accept"):
            if self.headers.get(h) is not None:
                req.add_header(h, self.headers[h])
        try:
            with urllib.request.urlopen(req, timeout=ARGS.upstream_timeout) as r:
                status, hdrs, data = r.status, r.getheaders(), r.read()
        except urllib.error.HTTPError as e:  # 4xx/5xx from the upstream: pass them on unchanged
            status, hdrs, data = e.code, list(e.headers.items()), e.read()
        except (urllib.error.URLError, OSError) as e:
            return self.reply(502, {"error": {"message": "fault_server: upstream unreachable: %s"
                                              % type(e).__name__, "type": "proxy_error"}})
        keep = [(k, v) for k, v in hdrs if k.lower() not in HOP_BY_HOP]
        return self.reply(status, data, keep, content_type=None, forwarded=True)

    # -- dispatch --------------------------------------------------------------------------------
    def handle_any(self):
        path, _, query = self.path.partition("?")
        if path == "/_stats" and self.command == "GET":
            self.read_body()
            with STATS_LOCK:
                snapshot = dict(STATS)
            self.reply(200, snapshot)
            return
        parts = path.split("/", 2)  # "", mode, rest
        mode = parts[1] if len(parts) > 1 else ""
        rest = "/" + (parts[2] if len(parts) > 2 else "") + ("?" + query if query else "")
        body = self.read_body()
        if mode not in MODES:
            status = self.reply(404, {"error": {"message": "fault_server: unknown mode %r; modes: %s"
                                                % (mode, ", ".join(MODES)), "type": "not_found"}})
            log("%s %s %s %s" % (mode or "-", self.command, rest, status))
            return
        with STATS_LOCK:
            STATS[mode] += 1

        if mode == "hang":
            log("hang %s %s sleeping %ss" % (self.command, rest, ARGS.hang_seconds))
            time.sleep(ARGS.hang_seconds)
            self.close_connection = True
            return
        if mode == "close":
            log("close %s %s closed without a reply" % (self.command, rest))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return

        if mode == "ok":
            status = self.forward(rest, body)
        elif mode == "slow":
            time.sleep(ARGS.slow_seconds)
            status = self.forward(rest, body)
        elif mode == "429once":
            digest = hashlib.sha256(body).hexdigest()
            with STATS_LOCK:
                first = digest not in SEEN_429
                SEEN_429.add(digest)
            if first:
                status = self.reply(429, {"error": {"message": "Rate limit reached",
                                                    "type": "rate_limit"}},
                                    [("Retry-After", "1")])
            else:
                status = self.forward(rest, body)
        elif mode == "500":
            status = self.reply(500, {"error": {
                "message": "The server had an error while processing your request",
                "type": "server_error"}})
        elif mode == "badjson":
            status = self.reply(200, b'{"choices": [{"message": ')
        elif mode == "auth":
            got = self.headers.get("Authorization")
            if got == "Bearer " + ARGS.key:
                status = self.forward(rest, body)
            else:
                sent = got or ""
                if sent.startswith("Bearer "):
                    sent = sent[len("Bearer "):]
                status = self.reply(401, {"error": {
                    "message": "Incorrect API key provided: %s" % sent,
                    "type": "invalid_request_error"}})
        log("%s %s %s %s" % (mode, self.command, rest, status))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_any


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8000 (no /v1)")
    p.add_argument("--key", required=True, help="the API key that mode auth accepts")
    p.add_argument("--hang-seconds", type=float, default=600.0)
    p.add_argument("--slow-seconds", type=float, default=3.0)
    p.add_argument("--upstream-timeout", type=float, default=600.0)
    ARGS = p.parse_args()
    ThreadingHTTPServer.daemon_threads = True  # a hanging thread never blocks shutdown
    ThreadingHTTPServer.allow_reuse_address = True
    srv = ThreadingHTTPServer((ARGS.host, ARGS.port), Handler)
    log("listening on %s:%d, upstream %s" % (ARGS.host, srv.server_address[1], ARGS.upstream))
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


if __name__ == "__main__":
    main()
