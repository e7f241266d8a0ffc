"""A tiny OpenAI-ish server for supervisor tests (stdlib only, starts in ~50 ms).

python fake_engine.py PORT NAME [--sick-file F] [--ignore-term] [--child]
  /health     200, or 503 while F exists (a hung engine)
  /v1/models  lists NAME
  --ignore-term  ignore SIGTERM (the supervisor must escalate to SIGKILL)
  --child        fork a `sleep` worker into the same process group (like vLLM's workers)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("name")
    p.add_argument("--sick-file")
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--child", action="store_true")
    a = p.parse_args()
    if a.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if a.child:
        child = subprocess.Popen(["sleep", "60"])
        print(f"child pid {child.pid}", flush=True)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                sick = a.sick_file and os.path.exists(a.sick_file)
                self._send(503 if sick else 200, {})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": a.name, "object": "model"}]})
            else:
                self._send(404, {})

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print(f"fake engine {a.name} on {a.port}", flush=True)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
