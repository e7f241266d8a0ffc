"""The benchmark scenarios; each `run(bench)` returns a JSON-able dict for the report."""
