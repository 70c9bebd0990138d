"""Test backend: answers every request with JSON naming itself, the path it got and the headers.

Started as berth-echo@NAME-PORT.service; listens on 127.0.0.1:PORT.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps(
            {
                "backend": self.server.backend_name,
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = answer

    def log_message(self, format, *args):
        pass


def main():
    name, port = sys.argv[1].rsplit("-", 1)
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), EchoHandler)
    server.daemon_threads = True
    server.backend_name = name
    server.serve_forever()


if __name__ == "__main__":
    main()
