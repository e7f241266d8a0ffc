"""Prefill seconds per prompt token, learnt from the pool's own answers.

TTFT of a request that did not wait for a batch slot is about `base + k x uncached
prompt tokens` (the engine computes only what its prefix cache lacks). An exponentially
weighted least-squares fit of TTFT against uncached tokens gives k: the price, in
seconds, of every token a cache hit would save. Until the answers spread over enough
prompt lengths to fit a slope, the configured prior is used.
"""

from __future__ import annotations

DECAY = 0.98  # weight of the past per sample: ~50 answers of memory
MIN_WEIGHT = 8.0  # samples (weighted) before the fit is trusted
MIN_SPREAD_TOKENS = 64.0  # standard deviation of uncached tokens needed to see a slope


class PrefillFit:
    def __init__(self, prior_s_per_token: float) -> None:
        self.prior = prior_s_per_token
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def add(self, uncached_tokens: float, ttft: float) -> None:
        d = DECAY
        self._w = d * self._w + 1.0
        self._x = d * self._x + uncached_tokens
        self._y = d * self._y + ttft
        self._xx = d * self._xx + uncached_tokens * uncached_tokens
        self._xy = d * self._xy + uncached_tokens * ttft

    @property
    def seconds_per_token(self) -> float:
        w = self._w
        if w < MIN_WEIGHT:
            return self.prior
        mx = self._x / w
        var = self._xx / w - mx * mx
        if var < MIN_SPREAD_TOKENS**2:
            return self.prior
        slope = (self._xy / w - mx * self._y / w) / var
        # A negative or zero slope is noise (queueing dominating a few samples): keep the prior.
        return slope if slope > 0.0 else self.prior
