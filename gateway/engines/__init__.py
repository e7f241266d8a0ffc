"""Spawned engines: launch, supervise, probe and report the processes behind spawned backends.

Layout (one job per module):
- `launchers/`  the exact argv and env of each engine kind (pure functions, golden-tested)
- `ports`, `gpus`  resources handed to a replica (free ports, disjoint device sets)
- `logs`       per-engine rotating log file plus an in-memory ring of recent lines
- `osproc`     die-with-parent, process-group signals
- `process`    one engine process: its state machine, spawn, restart loop and stop
- `health`     readiness polling, runtime probes, queue metrics scraping
- `endpoints`  health probes of external endpoints (READY <-> UNHEALTHY)
- `diff`       what a reload means for running engines (a pure plan)
- `supervisor` owns the list: start-up, reload diffs, endpoint probes, status
- `admin_api`, `cli`  the operator's view (`/admin/backends`, `gateway status`)
"""
