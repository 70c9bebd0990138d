"""The failure hook's receiving end on the test host: records every request, one JSON line each.

Usage: hook_listener.py PORT RECORD_FILE. Listens on 127.0.0.1 only and answers 204.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Recorder(BaseHTTPRequestHandler):
    def record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": body.decode(errors="replace"),
        }
        with open(sys.argv[2], "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
        self.send_response(204)
        self.end_headers()

    do_GET = do_POST = do_PUT = record


HTTPServer(("127.0.0.1", int(sys.argv[1])), Recorder).serve_forever()
