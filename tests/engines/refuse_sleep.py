"""An engine like vLLM's CPU build: `--enable-sleep-mode` makes it exit at start with vLLM's
message; without the flag it is the simulator."""

from __future__ import annotations

import os
import sys

if "--enable-sleep-mode" in sys.argv:
    print("ValueError: Sleep mode is not supported on current platform.", flush=True)
    sys.exit(1)
os.execv(sys.executable, [sys.executable, "-m", "gateway.sim", *sys.argv[1:]])
