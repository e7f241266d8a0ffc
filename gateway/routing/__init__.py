"""Where a request can go: backends, the per-pool admission queue, the balancing policies."""
