"""Entry point: `python -m gateway.sim --port P --served-model-name NAME [NAME ...]`."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

from gateway import tokens
from gateway.sim.app import SimApp
from gateway.sim.config import SimConfig, config_from_args
from gateway.sim.devices import DeviceOutOfMemory
from gateway.sim.http import serve


async def _serve(cfg: SimConfig) -> None:
    loop = asyncio.get_running_loop()
    app = SimApp(cfg)
    try:
        # vLLM checks free device memory before loading; the ledger file I/O is tiny but may wait
        # on another sim's lock, so it runs off the loop.
        await asyncio.to_thread(app.st.engine.claim_at_start)
    except DeviceOutOfMemory as exc:
        print(f"gateway.sim: ValueError: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    app.st.ready_at = loop.time() + cfg.startup_seconds
    server = await serve(app.handle, cfg.host, cfg.port)
    port = server.sockets[0].getsockname()[1]
    # SimProcess (gateway.sim.testing) reads the port from this line when started with --port 0.
    print(f"gateway.sim: listening on http://{cfg.host}:{port} served={','.join(cfg.served_model_names)} "
          f"startup_seconds={cfg.startup_seconds}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()  # streams may be stalled on purpose: do not wait for them


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(argv)
    kv_tokens = cfg.kv.num_gpu_blocks * cfg.kv.block_size
    if cfg.max_model_len > kv_tokens:
        # vLLM refuses to start when one max-length request could not fit in the KV cache.
        print(f"gateway.sim: ValueError: The model's max seq len ({cfg.max_model_len}) is larger than the maximum "
              f"number of tokens that can be stored in KV cache ({kv_tokens}). Try increasing "
              "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
              file=sys.stderr, flush=True)
        return 1
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokens.encoding()  # load the BPE table now rather than on the first request
    # Long-lived objects (tokenizer tables) need not be rescanned by every GC pass.
    gc.collect()
    gc.freeze()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(_serve(cfg))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
