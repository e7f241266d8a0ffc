"""What one backend probably has in its prefix cache: the prompt blocks recently sent there.

An approximation kept by the gateway alone: every block of every prompt dispatched to
the backend is recorded (the engine computes and caches them), least recently used
first out, capped at about what the engine's KV cache can hold and aged out after
`ttl` seconds. Memory is bounded by the cap: one dict entry (~100 bytes) per block.

Blocks of one prompt are recorded tail first, so a prompt's first blocks are the most
recent and are evicted last, as vLLM frees a sequence's blocks tail first. The set is
then "prefix closed" for each chain (if block k of a prompt is present, so are 1..k-1),
which lets `match` binary-search the longest cached prefix in O(log n) lookups.

The cap is corrected by what the engine says it actually served from cache
(`calibrate`): fewer cached tokens than predicted means the engine holds less than we
assume (other traffic, a smaller KV cache), so the cap shrinks multiplicatively; a
correct prediction lets it grow back slowly, never past the engine's capacity.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

MIN_BLOCKS = 16
SHRINK = 0.8  # on an over-prediction
GROW = 1.02  # on a confirmed prediction


class PrefixIndex:
    def __init__(self, max_blocks: int, ttl: float) -> None:
        self.max_blocks = max(MIN_BLOCKS, max_blocks)  # ceiling from the engine's KV capacity
        self.cap = self.max_blocks  # current cap, calibrated from the engine's reports
        self.ttl = ttl
        self._seen: OrderedDict[int, float] = OrderedDict()  # block hash -> last sent, oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def _fresh(self, h: int, now: float) -> bool:
        t = self._seen.get(h)
        return t is not None and now - t <= self.ttl

    def match(self, hashes: Sequence[int], now: float) -> int:
        """How many leading blocks of `hashes` this backend probably has cached."""
        if not hashes or not self._fresh(hashes[0], now):
            return 0
        lo, hi = 1, len(hashes)  # invariant: hashes[:lo] cached; answer <= hi
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._fresh(hashes[mid - 1], now):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def has(self, h: int, now: float) -> bool:
        """Whether one hash (e.g. a conversation's opening) was recorded and is still fresh."""
        return self._fresh(h, now)

    def insert(self, hashes: Sequence[int], now: float) -> None:
        seen = self._seen
        for h in reversed(hashes):
            if h in seen:
                seen.move_to_end(h)
            seen[h] = now
        self._trim(now)

    def _trim(self, now: float) -> None:
        seen = self._seen
        while seen and (len(seen) > self.cap or now - next(iter(seen.values())) > self.ttl):
            seen.popitem(last=False)

    def resize(self, max_blocks: int, now: float) -> None:
        """The engine told us its KV capacity (in our blocks)."""
        max_blocks = max(MIN_BLOCKS, max_blocks)
        if max_blocks != self.max_blocks:
            self.cap = min(self.cap, max_blocks) if max_blocks < self.max_blocks else max_blocks
            self.max_blocks = max_blocks
            self._trim(now)

    def calibrate(self, predicted_blocks: int, actual_blocks: float, now: float) -> bool:
        """Correct the cap from the engine's own count; True if it shrank."""
        if predicted_blocks >= 2 and actual_blocks < 0.5 * predicted_blocks:
            self.cap = max(MIN_BLOCKS, int(min(self.cap, len(self._seen)) * SHRINK))
            self._trim(now)
            return True
        if predicted_blocks > 0 and actual_blocks >= 0.9 * predicted_blocks and self.cap < self.max_blocks:
            self.cap = min(self.max_blocks, int(self.cap * GROW) + 1)
        return False

    def clear(self) -> None:
        self._seen.clear()
