"""What the metrics scrape learns about an engine's prefix cache: KV capacity and counters."""

from __future__ import annotations

from gateway.engines.health import _prefix_counters, kv_capacity_tokens, parse_gauges
from gateway.routing.backend import Backend

VLLM = """# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="32",cache_dtype="auto",enable_prefix_caching="True",num_cpu_blocks="None",num_gpu_blocks="2048"} 1.0
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1200.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 900.0
vllm:num_requests_running{engine="0",model_name="m"} 1.0
"""
LLAMACPP = """llamacpp:prompt_tokens_total 300
llamacpp:prompt_tokens_cached_total 700
"""


def test_vllm_kv_capacity_from_cache_config_info() -> None:
    assert kv_capacity_tokens(VLLM) == 2048 * 32
    assert kv_capacity_tokens("vllm:num_requests_running 1\n") is None
    assert kv_capacity_tokens('\nvllm:cache_config_info{block_size="x",num_gpu_blocks="1"} 1\n') is None


def test_prefix_counters_of_vllm_and_llamacpp() -> None:
    names = {"vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
             "llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total"}
    b = Backend(id="b", pool="p", url="http://h/v1", max_concurrency=1)
    _prefix_counters(b, parse_gauges(VLLM, names))
    assert (b.cache.engine_queries, b.cache.engine_hits) == (1200.0, 900.0)
    b = Backend(id="b", pool="p", url="http://h/v1", max_concurrency=1)
    # llama.cpp counts processed and cached prompt tokens apart: queries are their sum.
    _prefix_counters(b, parse_gauges(LLAMACPP, names))
    assert (b.cache.engine_queries, b.cache.engine_hits) == (1000.0, 700.0)
    b = Backend(id="b", pool="p", url="http://h/v1", max_concurrency=1)
    _prefix_counters(b, parse_gauges("sglang:num_running_reqs 1\n", names))
    assert b.cache.engine_queries is None and b.cache.engine_hits is None
