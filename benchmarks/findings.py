"""The analysis section of RESULTS.md: what the numbers mean, what we keep, what we propose.

Static text written from the runs and profiles behind this harness; the exact figures of
the current run are in the tables above it (figures here marked ~ are from those runs).
"""

FINDINGS = """## 7. Findings

### Where the CPU goes (section 5)

- **Non-stream**: the aiohttp client to the engines is ~40% of the gateway's CPU (building
  the request, its header multidicts and payload objects, the response parser and stream
  reader), uvicorn ~17%, uvloop's C code ~10%, the gateway's own modules ~20% (`inference`,
  `proxy`, `sse`, `asgi`, `rewrites`), prometheus_client ~2-3%.
- **Streams with one write per event** (what real engines do) and **1,000 streams**: the cost
  is per event: one `recv` from the engine and one `send` to the client, each a syscall
  plus a loop wake-up. uvloop's C code takes 22-49% of the samples, uvicorn's `send` 12-16%
  (it includes the socket write), aiohttp's stream reader 14-28%, the relay loop
  (`proxy._relay_stream`, `sse`, `rewrites`, `bodyedit`) ~10-15%. At 1,000 streams the
  gateway spends ~40 us per relayed event; its CPU is 70-85% busy, and that, not any
  queue, is what adds TTFT (section 2): every step of a new request waits behind the
  relaying. The TTFT tail therefore moves with the neighbours' load on the gateway's CPU.

### Choices kept (section 6)

- **uvloop + httptools**: the stdlib loop costs ~5-11% more CPU per request, h11 ~30-55%.
- **Plain ASGI routes, no framework** on the inference path (as built): nothing to remove.
- **orjson**: parsing a 600-byte chat request takes 0.6 us with orjson vs 2.8 us with `json`,
  encoding a response 0.25 vs 3.8 us (timeit on this machine); the gateway only parses the
  request and patches bytes afterwards, so the remaining JSON cost is small.
- **aiohttp over httpx**: httpx's default transport costs 7-9x the CPU per request at c=32
  (encode/httpx #3215). Keep-alive to engines matters (+70-80% CPU without). The session's
  `limit=0` is right (the pools enforce per-backend limits; aiohttp's default 100 would be a
  second queue); `auto_decompress=False` changes nothing measurable (we send
  `Accept-Encoding: identity`). No change to `gateway/upstream.py` settings was justified.
- **prometheus_client** on the request path: 1-3% of the samples; removing the metrics object
  changed CPU per request by 0 to -9% between runs. Keep it; a plain-counter version (as in
  `gateway/sim/metrics.py`) would save a few microseconds if wanted.
- **uvicorn settings**: access log off (on: +15-30% CPU per non-stream request);
  `proxy_headers` off made no measurable difference, so `gateway/server.py` is unchanged.
- **Several workers (SO_REUSEPORT)**: on the gateway's single CPU, 2 workers only add context
  switches (no gain, +2-13% CPU). With a CPU each they would add throughput, but each worker's
  least-outstanding sees only its own share of the in-flight requests: in the model, 4 workers
  raise the p99 at 90% load by ~10% for least_outstanding and ~8% for speed_aware. Engine
  gauges scraped from `/metrics` give every worker the same view of the engines' queues.
  Recommendation: one process until a CPU is saturated; then workers plus engine scraping.

### Proposed hot-path changes, with the gain measured here

1. **Replace aiohttp on the request path with a small keep-alive client on asyncio protocols
   and httptools** (prototype: `benchmarks/upstreams.py` `RawSession`, ~250 lines, with the
   aiohttp surface the proxy uses and aiohttp's exception classes, so `proxy.py` is
   unchanged). Measured (section 6): ~-35-40% CPU per non-stream request (~185 -> ~115 us),
   ~-20% per stream with one write per event, c=1 added latency p50 ~0.45 -> ~0.28 ms (meets
   the 0.3 ms target), ~-13% CPU at 1,000 streams. It passes the gateway's test suite:
   `.venv/bin/python -m pytest -p benchmarks.pytest_raw_upstream tests --ignore=tests/sim
   --ignore=tests/engines` (271 passed, disconnect/timeout/retry tests included). Diff: move
   `RawSession` to `gateway/upstream_raw.py`; `gateway/upstream.make_session()` returns it for
   `state.http` (discovery's `session.get(...).json()` is covered too); keep an aiohttp session
   for the supervisor's probes.
2. **`sse.event_usage` without a generator per event** (0.83 -> 0.23 us per event, timeit):
   ```python
   _USAGE = b'"usage":'
   def event_usage(event: bytes) -> dict[str, Any] | None:
       i = event.rfind(_USAGE)  # vLLM puts usage last: found from the end at once
       if i < 0 or event[i + 8 : i + 10].lstrip()[:1] != b"{":
           return None
       ...  # parse as today
   ```
3. **Do not keep every relayed event in `RequestContext.delivered`** for the life of a stream
   (it is read only when a stream ends without the engine's usage chunk, which the gateway
   always requests). At 1,000 streams of 100 tokens that list is ~20 MB: peak RSS 104-109 MB
   -> 86-87 MB without it (section 2, "proposed"). Proposal: count content events
   (`ctx.delivered_events += 1`) and keep the bytes only up to a cap (say 64 KiB), estimating
   beyond it from the count; `metering.estimate` then works on the kept prefix plus the count.
4. **Make `speed_aware` the default balancer** (`config.PoolConfig.balancer`). Section 3, over
   our two full runs: at 90% load its p99 was 16-24% below least_outstanding (3.7-4.6 s vs
   4.8-5.5 s) and 75-81% below round robin (18-20 s), with the same mean; at 60% ~30% below
   least_outstanding (3.3 s vs 4.75 s) and a 20% lower mean. The model agrees (-22% at 90%,
   -14% at 60%).
5. **Scrape external endpoints' `/metrics`** (today only spawned engines are scraped, every
   `health.interval` = 5 s; for `endpoints:` nothing fills `engine_running`/`engine_waiting`,
   so traffic from other gateways or direct clients is invisible), every ~250 ms-1 s, and
   record the batch size as `Backend.extra["engine_capacity"]` = the most requests the engine
   ran while others waited (prototype `benchmarks/scrape.py`; for spawned engines the launcher
   knows `--max-num-seqs`). With the batch size known, speed_aware fills a fast engine's free
   slots before queueing anywhere: model p99 at 60% 4.7 -> 3.0 s (the state-only oracle: 2.7 s);
   live runs at 60% -10 to -14% p99 and mean. At 90% the gain disappears in the model and is
   within noise live (everything queues anyway).
6. **`inference.finish` feeds non-stream requests to `Backend.observe()` as if the whole
   response were the first token**, and the microseconds between sending headers and body
   as decode time: `ewma_tpot` becomes ~1e-6 s/token for pools with non-stream traffic.
   speed_aware copes (it falls back to TTFT via `max()`), but the estimate is wrong. Diff:
   ```python
   ttft = ctx.first_byte_at - ctx.upstream_started if ctx.stream else None
   b.observe(ttft, end - ctx.upstream_started, int(out or 0))
   # Backend.observe: when ttft is None, tpot = duration / output_tokens (service per token)
   ```
7. **least_outstanding counts our own queued requests twice** (`outstanding + engine_waiting`:
   the engine's waiting requests include ours); use `max(outstanding, engine_running +
   engine_waiting)` as speed_aware does. Harmless today only because nothing scrapes endpoints.
8. **Metering costs ~17-23% more CPU per non-stream request, 5-25% per stream** (section 4, two
   runs; target < 10%). From the profile
   with SQLite: `store_sqlite._row` runs `dataclasses.asdict` (a recursive deep copy) for every
   record on the event loop (~3% of CPU); `executemany` in the writer thread competes for the
   GIL on the gateway's CPU (~5%). Proposals for the metering owner: build rows with
   `tuple(getattr(r, f) for f in FIELDS)`; larger, less frequent batches; the Redis store to
   pipeline one command per batch rather than per record.
9. **A request hint for the balancer** (interface change): `choose(candidates, hint)` with the
   request's `max_tokens`. In the model, speed_aware + batch size + this hint reaches the
   state-only oracle at 90% load (p99 4.2 s vs 4.25 s); without any idea of a request's length
   no policy can match the clairvoyant oracle's tail (3.3 s), which sends long requests only
   to fast engines.

### Gaps (where we stand)

- CPU per non-stream request is around the 200 us target (~190-220 us between runs), ~112 us
  with change 1; per stream it meets 350 us only when the engine writes the answer in one go;
  with one write per event (real engines) it is ~510-580 us, ~450 us with change 1. Per-event cost is mostly syscalls and
  uvicorn's `send`; the next step would be an HTTP/1.1 server protocol of our own for the
  inference routes (like `gateway/sim/http.py`) or a Rust ASGI server (granian); not measured.
- Added latency at c=1: p50 ~0.35-0.5 ms today (target 0.3), ~0.28 ms with change 1; p99
  meets 1 ms on a quiet machine, not while neighbours load the gateway's CPU.
- 1,000 streams: zero errors; peak RSS ~105-109 MB today, ~87 MB with changes 1 and 3.
- Balancing at 90%: far better than round robin (target met), 23-55% above the
  clairvoyant oracle's p99 in live runs (p99 of ~460 requests is noisy), 43% in the model
  (target "within 10%" not met; see change 9 for why and how close a length hint gets).
- Metering: 17-23% extra CPU per non-stream request (target < 10%), see change 8.
- The machine is shared: other engineers' test runs load both CPUs, so req/s and tails
  vary between runs; CPU per request moved ~5-10% between repetitions.
"""
