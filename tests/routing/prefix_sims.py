"""What the cache-aware routing tests share: simulated engines with prefix caching (the
`sims` fixture in tests/routing/conftest.py starts three) and one system prompt long
enough to fill several index blocks."""

from __future__ import annotations

from gateway.sim.testing import SimProcess

SIM_ARGS = ["--served-model-name", "m", "--enable-prompt-tokens-details", "--max-model-len", "32768",
            "--ttft-ms", "1", "--itl-ms", "1", "--output-tokens", "8", "--num-gpu-blocks-override", "4096"]
SYSTEM = {"role": "system", "content": "You are a careful assistant who answers briefly. " * 20}


def served(sims: list[SimProcess]) -> list[int]:
    """Requests each engine has answered so far."""
    return [s.state()["requests_total"] for s in sims]
