"""vLLM-named Prometheus metrics, kept as plain numbers and rendered on scrape.

prometheus_client costs locks and objects per observation; here an observation is
an integer add and a bisect, which matters at thousands of requests per second.
Names, labels and buckets follow vLLM's V1 engine.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)
FINISHED_REASONS = ("stop", "length", "abort")  # engine-level reasons, as vLLM labels them


class Histogram:
    __slots__ = ("buckets", "counts", "total", "count")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last slot: +Inf only
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str, out: list[str]) -> None:
        cumulative = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            cumulative += n
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_count{{{labels}}} {self.count}")
        out.append(f"{name}_sum{{{labels}}} {self.total}")


class Metrics:
    def __init__(self, model_name: str, gauges: Callable[[], tuple[int, int, int]],
                 kv_usage: Callable[[], float] | None = None,
                 extra: list[Callable[[str, list[str]], None]] | None = None, dialect: str = "vllm") -> None:
        """gauges() returns (running, waiting, max_num_seqs) at scrape time; kv_usage() the KV
        cache usage (default: running / max_num_seqs); each extra(labels, out) appends its own
        metric lines (prefix cache, sleep state). dialect "llamacpp": llama-server's names instead."""
        self.model_name = model_name
        self.dialect = dialect
        self._gauges = gauges
        self._kv_usage = kv_usage
        self._extra = extra or []
        self._labels = f'engine="0",model_name="{_escape(model_name)}"'
        self.prompt_tokens = 0
        self.prompt_tokens_cached = 0  # of prompt_tokens, served by the prompt cache (llamacpp dialect)
        self.generation_tokens = 0
        self.success: dict[str, int] = dict.fromkeys(FINISHED_REASONS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)

    def finished(self, reasons: list[str], e2e_seconds: float) -> None:
        """One request ended; `reasons` has one entry per sequence (choice)."""
        for reason in reasons:
            if reason == "tool_calls":
                reason = "stop"  # the engine stopped at EOS; tool_calls is an API-level reason
            self.success[reason] = self.success.get(reason, 0) + 1
        self.e2e.observe(e2e_seconds)

    def render(self) -> bytes:
        if self.dialect == "llamacpp":
            return self._render_llamacpp()
        running, waiting, max_num_seqs = self._gauges()
        lb = self._labels
        if self._kv_usage is not None:
            usage = self._kv_usage()
        else:
            usage = min(1.0, running / max_num_seqs) if max_num_seqs else 0.0
        out = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{lb}}} {float(running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{lb}}} {float(waiting)}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{lb}}} {usage}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{lb}}} {float(self.prompt_tokens)}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{lb}}} {float(self.generation_tokens)}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
        ]
        for reason, n in self.success.items():
            out.append(f'vllm:request_success_total{{{lb},finished_reason="{reason}"}} {float(n)}')
        out += [
            "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
            "# TYPE vllm:time_to_first_token_seconds histogram",
        ]
        self.ttft.render("vllm:time_to_first_token_seconds", lb, out)
        out += [
            "# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.",
            "# TYPE vllm:e2e_request_latency_seconds histogram",
        ]
        self.e2e.render("vllm:e2e_request_latency_seconds", lb, out)
        for render in self._extra:
            render(lb, out)
        out.append("")
        return "\n".join(out).encode()


    def _render_llamacpp(self) -> bytes:
        """llama-server's /metrics (no labels): processed and cached prompt tokens apart."""
        running, waiting, _ = self._gauges()
        series = (
            ("counter", "prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens",
             self.prompt_tokens - self.prompt_tokens_cached),
            ("counter", "prompt_tokens_cached_total", "Number of prompt tokens reused from the cache",
             self.prompt_tokens_cached),
            ("counter", "tokens_predicted_total", "Number of generation tokens processed", self.generation_tokens),
            ("gauge", "requests_processing", "Number of requests processing", running),
            ("gauge", "requests_deferred", "Number of requests deferred", waiting),
        )
        out: list[str] = []
        for kind, name, help_, value in series:
            out += [f"# HELP llamacpp:{name} {help_}", f"# TYPE llamacpp:{name} {kind}", f"llamacpp:{name} {value}"]
        out.append("")
        return "\n".join(out).encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_prometheus(text: str) -> dict[str, float]:
    """Parse exposition text into {"name{labels}": value} plus {"name": sum over label sets}.

    Good enough for our own output and vLLM's (no escaped quotes or commas inside labels
    are needed to read the values). Histogram series are included under their sample names.
    """
    out: dict[str, float] = {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        out[series] = v
        name = series.split("{", 1)[0]
        sums[name] = sums.get(name, 0.0) + v
    out.update(sums)
    return out
