"""RESULTS.md sections for issue #13: the gateway beside its peers, robustness, and the targets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .measure import fmt, summary

NA = "n/a"
ORDER = ("direct", "gateway", "gateway, auth/metering/metrics off", "vllm-router", "sglang-router", "nginx",
         "python floor")


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def _status(ok: bool | None) -> str:
    return NA if ok is None else ("**met**" if ok else "**not met**")


def _by(points: list[dict[str, Any]], mode: str, c: int) -> dict[str, dict[int, dict[str, Any]]]:
    """via -> rep -> point, for one mode and concurrency."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for p in points:
        if p["mode"] == mode and p["concurrency"] == c:
            out.setdefault(p["via"], {})[p["rep"]] = p
    return out


def _per_rep(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]],
             f: Callable[[dict[str, Any], dict[str, Any]], float | None]) -> dict[str, float]:
    """f(a's point, b's point) for each repetition both have, summarised."""
    return summary([f(a[r], b[r]) for r in sorted(a) if r in b])


def _added(key: str) -> Callable[[dict[str, Any], dict[str, Any]], float]:
    return lambda d, p: p[key] - d[key]


def _ratio(key: str) -> Callable[[dict[str, Any], dict[str, Any]], float | None]:
    return lambda base, p: p[key] / base[key] if base.get(key) and p.get(key) is not None else None


def cpu_ratio(pe: dict[str, Any], mode: str, c: int, via: str = "gateway") -> dict[str, float]:
    g = _by(pe.get("points", []), mode, c)
    return _per_rep(g.get(pe.get("baseline", "vllm-router"), {}), g.get(via, {}), _ratio("server_cpu_us"))


def added_p50_gap(pe: dict[str, Any], mode: str, via: str = "gateway") -> dict[str, float]:
    """(our added p50) - (the baseline's added p50) at c=1, ms, per repetition."""
    g = _by(pe.get("points", []), mode, 1)
    d, ours, base = g.get("direct", {}), g.get(via, {}), g.get(pe.get("baseline", "vllm-router"), {})
    key = "lat_p50_ms"
    return summary([(ours[r][key] - d[r][key]) - (base[r][key] - d[r][key]) for r in sorted(d)
                    if r in ours and r in base])


def interleaved_gap(pe: dict[str, Any], via: str = "gateway") -> dict[str, float] | None:
    """(our added p50) - (the baseline's) from the interleaved c=1 probe: overall median,
    range over its blocks of rounds."""
    t = pe.get("interleaved_c1", {}).get("targets", {})
    ours, base = t.get(via), t.get(pe.get("baseline", "vllm-router"))
    if not ours or not base or "added_p50_ms" not in ours:
        return None
    blocks = [a - b for a, b in zip(ours["added_p50_blocks_ms"], base["added_p50_blocks_ms"], strict=False)]
    s = summary(blocks)
    s["med"] = ours["added_p50_ms"] - base["added_p50_ms"]
    return s


def interleaved_table(pe: dict[str, Any]) -> str:
    il = pe.get("interleaved_c1")
    if not il:
        return ""
    rows = []
    for via in [v for v in ORDER if v in il["targets"]]:
        r = il["targets"][via]
        blocks = r.get("added_p50_blocks_ms")
        rows.append([f"**{via}**" if via == "gateway" else via, f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.2f}",
                     f"{r['added_p50_ms']:.3f}" if "added_p50_ms" in r else NA,
                     ", ".join(f"{b:.3f}" for b in blocks) if blocks else NA, str(r["errors"])])
    return (f"**non-stream, c=1, interleaved** ({il['rounds']} rounds; each round sends one request to every "
            "target in turn, the order rotating; \"added\" is the median over rounds of the proxy's latency "
            "minus the direct connection's in the same round, then per block of rounds)\n\n"
            + _table(["proxy", "p50 ms", "p99 ms", "added p50 ms", f"added p50 per block of {il['rounds'] // il['blocks']} rounds", "errors"],
                     rows) + "\n")


def headline_rows(sc: dict[str, Any]) -> list[list[str]]:
    """Issue #13's targets, from this run's peers, streams and robustness scenarios."""
    rows: list[list[str]] = []
    pe = sc.get("peers", {})
    if pe.get("points") and any(p["via"] == pe.get("baseline") for p in pe["points"]):
        for label, mode in (("non-stream request", "non-stream"), ("16-chunk stream", "stream, 1 write per event")):
            r = cpu_ratio(pe, mode, 32)
            rows.append([f"CPU per {label} (c=32), gateway / vllm-router", "<= 1.0x", fmt(r, 2) + "x",
                         _status(r["med"] <= 1.0 if r["n"] else None)])
        il = interleaved_gap(pe)
        if il is not None:
            rows.append(["added p50 at c=1, non-stream, gateway minus vllm-router (interleaved)", "<= +0.1 ms",
                         f"{fmt(il, 2)} ms", _status(il["med"] <= 0.1 if il["n"] else None)])
        else:
            gap = added_p50_gap(pe, "non-stream")
            rows.append(["added p50 at c=1, non-stream, gateway minus vllm-router", "<= +0.1 ms",
                         f"{fmt(gap, 2)} ms", _status(gap["med"] <= 0.1 if gap["n"] else None)])
    ms = sc.get("streams", {})
    if "gateway" in ms:
        ok = ms["gateway"]["errors"] == 0 and ms["rss_peak_mb"] < 100
        rows.append([f"{ms['streams']:,} concurrent streams: errors / peak RSS", "0 / < 100 MB",
                     f"{ms['gateway']['errors']} / {ms['rss_peak_mb']:.0f} MB", _status(ok)])
    rb = sc.get("robustness", {})
    if "deaf" in rb:
        d = rb["deaf"]
        rows.append([f"{d['deaf']} never-reading streams on {d['slots']} slots: normal p99 / unloaded p99", "< 2x",
                     f"{d['p99_ratio']:.1f}x ({d['loaded']['p99_ms']:.0f} vs {d['unloaded']['p99_ms']:.1f} ms; "
                     f"{sum(d['loaded']['failed'].values())} of {d['loaded']['requests']} cut)",
                     _status(d["p99_ratio"] < 2)])
    if "held" in rb:
        h = rb["held"]["gateway"]["partial headers"]
        rows.append([f"{h['opened']} slowloris connections closed by the gateway within {rb['hold_s']:.0f} s",
                     "all (read timeout)", f"{h['closed']} of {h['opened']}", _status(h["closed"] == h["opened"])])
    if "malformed" in rb:
        m = rb["malformed"]["gateway"]
        good = sum(1 for a in m.values() if a["status"] == 400 and a["openai_error"])
        rows.append(["malformed HTTP answered 400 with an OpenAI-shaped error", f"{len(m)} of {len(m)}",
                     f"{good} of {len(m)}", _status(good == len(m))])
    return rows


def peers(pe: dict[str, Any]) -> str:
    if not pe.get("points"):
        return f"## A. Beside the peers\n\n{pe.get('error') or pe.get('skipped') or 'not run'}\n"
    base = pe.get("baseline", "vllm-router")
    st = pe["setup"]
    vias = [v for v in ORDER if any(p["via"] == v for p in pe["points"])]
    out = [f"""## A. Beside the peers: the same engine, the same CPU, the same repetitions

Gateway configuration: {pe['subsystems']}. Every proxy runs in front of the same simulated
engine (`--ttft-ms 0 --itl-ms 0` for non-stream; `--itl-ms 1`, one write per SSE event, for
16-token streams with usage: 20 events), pinned to the gateway's CPU; the load generator
and the engine share the other CPU. Closed loop, {st['reps']} repetitions of {st['window']} s windows after
{st['warmup']} s warm-up, the proxies' order rotated each repetition. CPU is `utime + stime` of
the proxy's whole process tree (every thread of the Rust routers, nginx's master and
worker) over the window, per completed request. Ratios are to {base} in the same
repetition (median (min-max) over repetitions); "added" is the proxy's latency minus
the direct connection's in the same repetition.

Peers: {', '.join(f'{k} {v}' for k, v in pe.get('versions', {}).items()) or NA}; routers with
`--policy round_robin` (their cheapest for one worker; the default `cache_aware` keeps a
prompt tree), Prometheus on, log level warn; nginx 1 worker, `proxy_buffering off`,
upstream keep-alive. The gateway: `gateway serve` as shipped (speed_aware, engine `/metrics`
read every second). "python floor" is `benchmarks/floorproxy.py`: the gateway's stack
(uvloop, httptools) doing only what no L7 proxy can skip (find where each request and
response ends, pass the bytes over a pooled keep-alive connection); no routing, auth,
metering or metrics. What it spends per request, any Python gateway on this stack spends.
"""]
    for miss, why in pe.get("missing", {}).items():
        out.append(f"- {miss}: not measured ({why})")
    modes = sorted({(p["mode"], p["concurrency"]) for p in pe["points"]},
                   key=lambda k: (k[0] != "non-stream", k[1]))
    for mode, c in modes:
        g = _by(pe["points"], mode, c)
        d, b = g.get("direct", {}), g.get(base, {})
        rows = []
        for via in vias:
            pts = g.get(via, {})
            if not pts:
                continue
            vals = list(pts.values())

            def s(key: str, vals: list[dict[str, Any]] = vals) -> dict[str, float]:
                return summary([p[key] for p in vals])

            proxy = via != "direct"
            rows.append([
                f"**{via}**" if via == "gateway" else via,
                fmt(s("rps")),
                fmt(s("server_cpu_us")) if proxy else NA,
                fmt(_per_rep(b, pts, _ratio("server_cpu_us")), 2) + "x" if proxy and b else NA,
                # Older JSON files have no kernel split.
                fmt(s("server_kernel_cpu_us")) if proxy and all("server_kernel_cpu_us" in p for p in vals) else NA,
                fmt(s("lat_p50_ms"), 2),
                fmt(_per_rep(d, pts, _added("lat_p50_ms")), 2) if proxy else NA,
                fmt(s("lat_p99_ms"), 2),
                fmt(_per_rep(d, pts, _added("lat_p99_ms")), 2) if proxy else NA,
                fmt(s("ttfc_p50_ms"), 2) if "stream" in mode and mode != "non-stream" else NA,
                fmt(s("errors")),
            ])
        out.append(f"**{mode}, c={c}**\n\n" + _table(
            ["proxy", "req/s", "CPU us/req", f"CPU vs {base}", "of it kernel us", "p50 ms", "added p50 ms", "p99 ms", "added p99 ms",
             "first chunk p50 ms", "errors"], rows) + "\n")
    table = interleaved_table(pe)
    if table:
        out.append(table)
    rss = pe.get("rss_mb", {})
    if rss:
        out.append("RSS after the scenario (MB, process tree): " + "; ".join(
            f"{via} {max(v.values()):.0f}" for via, v in rss.items()) + ".\n")
    return "\n".join(out)


def robustness(rb: dict[str, Any]) -> str:
    if "malformed" not in rb:
        return f"## B. Robustness\n\n{rb.get('error') or rb.get('skipped') or 'not run'}\n"
    names = list(rb["malformed"])
    cases = list(rb["malformed"][names[0]])
    mal_rows = []
    for case in cases:
        row = [case]
        for n in names:
            a = rb["malformed"][n][case]
            body = a["body"].replace("\r", "").replace("\n", " ").replace("|", "/")[:48]
            row.append(f"{a['status'] or 'none'}{' OpenAI' if a['openai_error'] else ''}: `{body}`" if body
                       else f"{a['status'] or 'none'} (empty body)")
        mal_rows.append(row)
    held_rows = []
    for n in names:
        for kind, h in rb["held"][n].items():
            after = summary(h["close_after_s"])
            answers = ", ".join(f"{k} x{v}" for k, v in h["answers"].items()) or "-"
            held_rows.append([n, kind, str(h["opened"]), str(h["closed"]),
                              fmt(after, 1) + " s" if after["n"] else "-", answers])
    pr = rb["held"].get("_probe", {})
    d = rb.get("deaf", {})
    deaf = ""
    if d:
        def line(k: str) -> str:
            x = d[k]
            failed = ", ".join(f"{why} x{n}" for why, n in x["failed"].items()) or "none"
            return (f"| {k.replace('_', ' ')} | {x['requests']} | {x['ok']} | {failed} | {x['p50_ms']:.1f} | "
                    f"{x['p99_ms']:.1f} | {x['max_ms']:.1f} |")

        deaf = f"""
**(b) {d['deaf']} never-reading streams on a pool of {d['slots']} slots.** Each asks a second gateway
(same configuration) for a {d['stream_mb']:.0f} MiB stream from `benchmarks/fatengine.py` (64 KiB events,
more than every buffer on the way) with a 4 KiB receive buffer and never reads; read
normally, that stream takes {d['reading_stream_ms']:.0f} ms. {d['concurrency']} normal clients send short
non-stream requests to the same pool for {d['window_s']:.0f} s, each cut after {d['timeout_s']:.0f} s;
"unloaded" is before the non-readers came, "after close" once they hung up. Non-readers
closed by the gateway: {d['deaf_closed_by_server']} of {d['deaf']}; streams the engine was still writing
before / after the loaded window / after the non-readers hung up: {d['engine_streaming_before']} /
{d['engine_streaming_after']} / {d['engine_streaming_end']}; gateway RSS after the loaded window {d['gateway_rss_mb']:.0f} MB.
Normal p99 with the non-readers: **{d['p99_ratio']:.1f}x** the unloaded p99 (target < 2x).

| phase | requests | ok | failed | p50 ms | p99 ms | max ms |
|---|---|---|---|---|---|---|
{line('unloaded')}
{line('loaded')}
{line('after_close')}
"""
    return f"""## B. Robustness: clients that misbehave

Gateway configuration: {rb['subsystems']}. The peers sit in front of the same engine.

**(a) Slowloris.** Per proxy, {rb['slowloris']} connections send part of a request's headers and
{rb['slow_body']} send the headers and part of a 1,000-byte body, then nothing; held {rb['hold_s']:.0f} s. A
normal request to the gateway meanwhile (c=1): p50 {pr.get('p50_ms', float('nan')):.1f} ms, p99
{pr.get('p99_ms', float('nan')):.1f} ms, {pr.get('ok', 0)} ok of {pr.get('requests', 0)}.

{_table(['proxy', 'sent', 'connections', f'closed by the server within {rb["hold_s"]:.0f} s', 'closed after',
         'first line written'], held_rows)}
{deaf}
**(c) Malformed HTTP.** Status and the start of the body each proxy answered ("OpenAI":
the body is `{{"error": {{"message", "type", "param", "code"}}}}`). nginx passes an unknown method
through to the engine, whose answer is what shows.

{_table(['request', *names], mal_rows)}
"""
