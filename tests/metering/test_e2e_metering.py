"""Metering, keys and limits through the real gateway, against simulated engines.

The simulator counts `vllm:prompt_tokens_total` / `vllm:generation_tokens_total` the way
vLLM does; after a mixed run the ledger must hold exactly the same totals.
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway import cli, tokens
from gateway.sim.testing import SimProcess
from tests.gw import ADMIN_KEY, CLIENT_KEY, GatewayServer, auth_yaml, sha, wait_until
from tests.metering.procs import GatewayProcess
from tests.redis_server import RedisServer

FAST = ["--ttft-ms", "1", "--itl-ms", "1", "--max-num-seqs", "128"]
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
CLIENT = {"authorization": f"Bearer {CLIENT_KEY}"}


def _client(gw: GatewayServer | GatewayProcess, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def _usage(url: str, group_by: str = "pool") -> list[dict[str, Any]]:
    r = httpx.get(url + "/admin/usage", params={"group_by": group_by, "since": "0"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["data"]
    return rows


def _totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    keys = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_requests")
    return {k: sum(r[k] for r in rows) for k in keys}


def _flush(gw: GatewayServer, requests: int | None = None) -> None:
    """Write the ledger now. A client can see the end of a response a moment before the
    gateway records it, so first wait until `requests` records have been handed over."""
    if requests is not None:
        assert wait_until(lambda: gw.state.meter.recorded >= requests), gw.state.meter.recorded
    assert gw.call(lambda: gw.state.meter.flush()) is True


def _engine_totals(*sims: SimProcess) -> tuple[int, int]:
    ms = [s.metrics() for s in sims]
    return (int(sum(m["vllm:prompt_tokens_total"] for m in ms)), int(sum(m["vllm:generation_tokens_total"] for m in ms)))


def _stream_raw(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    with httpx.stream("POST", url, json=body, headers=headers or CLIENT, timeout=20) as r:
        assert r.status_code == 200, r.read()
        return b"".join(r.iter_raw())


# --- the exact ledger ----------------------------------------------------------------------


def test_ledger_totals_equal_the_engines_counters(tmp_path: Path) -> None:
    with ExitStack() as st:
        s1 = st.enter_context(SimProcess(["--served-model-name", "engine-chat", *FAST, "--seed", "1"]))
        s2 = st.enter_context(SimProcess(["--served-model-name", "engine-chat", *FAST, "--seed", "2"]))
        # Streams to this engine stop after 7 tokens and hang: the gateway's idle timeout
        # cuts them, so their records must be estimated from what the client received.
        stall = st.enter_context(SimProcess(["--served-model-name", "engine-stall", *FAST, "--reasoning", "field",
                                             "--reasoning-field", "both", "--fault-stall-after-tokens", "7"]))
        emb = st.enter_context(SimProcess(["--served-model-name", "engine-emb", "--embedding"]))
        gw = st.enter_context(GatewayServer(auth_yaml() + f"""
store: "sqlite:///{tmp_path}/usage.db"
metering: {{flush_interval: 0.05}}
pools:
  chat: {{endpoints: [{s1.base_url}, {s2.base_url}], aliases: [gpt-alias]}}
  stall: {{endpoints: [{stall.base_url}], retries: 0, timeouts: {{stream_idle: 0.3}}}}
  emb: {{kind: embedding, endpoints: [{emb.base_url}]}}
"""))  # fmt: skip
        c = st.enter_context(_client(gw))
        msgs = [{"role": "user", "content": "count the tokens of this prompt exactly"}]
        for i in range(4):
            r = c.chat.completions.create(model="chat", messages=msgs, max_tokens=10 + i, user="u-42")
            assert r.usage is not None
        c.chat.completions.create(model="gpt-alias", messages=msgs, n=2, max_tokens=9)
        for include in (False, False, True):
            opts = {"stream_options": {"include_usage": True}} if include else {}
            chunks = list(c.chat.completions.create(model="chat", messages=msgs, stream=True, max_tokens=30, **opts))
            assert (chunks[-1].usage is not None) == include  # usage hidden unless asked for
        c.completions.create(model="chat", prompt=["one two three", "four five"], max_tokens=8)
        list(c.completions.create(model="chat", prompt="stream me", max_tokens=12, stream=True))
        c.embeddings.create(model="emb", input=["embed this", "and this one"])
        c.embeddings.create(model="emb", input="single")
        with cf.ThreadPoolExecutor(16) as pool:  # concurrency must not lose or double anything
            list(pool.map(lambda i: list(c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": f"parallel {i}"}], stream=True, max_tokens=20)),
                range(32)))  # fmt: skip
        cut = []
        for i in range(3):
            raw = _stream_raw(gw.base_url + "/chat/completions", {
                "model": "stall", "messages": [{"role": "user", "content": f"think hard {i}"}], "stream": True,
                "max_tokens": 50, **({"user": "u-cut"} if i == 0 else {})})  # fmt: skip
            assert b'"reasoning_content"' in raw and b"stopped sending" in raw  # cut by the idle timeout
            cut.append(raw)
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="nope", messages=msgs)
        stall.wait_for(lambda m: m.get("vllm:num_requests_running", 1) == 0)  # raises on timeout
        assert stall.metrics()["vllm:num_requests_running"] == 0

        _flush(gw, requests=4 + 1 + 3 + 2 + 2 + 32 + 3 + 1)
        rows = _usage(gw.url)
        t = _totals(rows)
        prompt, generated = _engine_totals(s1, s2, stall, emb)
        # vLLM's vllm:prompt_tokens_total counts the prompt once per sequence (the n=2 request
        # twice); usage.prompt_tokens, what clients are billed, counts it once.
        prompt -= tokens.count_chat_prompt(msgs)
        assert (t["prompt_tokens"], t["completion_tokens"]) == (prompt, generated)
        assert t["total_tokens"] == prompt + generated
        by_pool = {r["pool"]: r for r in rows}
        assert by_pool["stall"]["estimated_requests"] == 3 == t["estimated_requests"]
        assert by_pool["stall"]["requests"] == 3
        assert by_pool["stall"]["completion_tokens"] == 3 * 7
        assert by_pool[None]["requests"] == 1 and by_pool[None]["total_tokens"] == 0  # the 404
        users = {r["user"]: r for r in _usage(gw.url, "user")}
        assert users["u-42"]["requests"] == 4 and users["u-cut"]["requests"] == 1


def test_client_stream_is_the_engine_stream_minus_the_usage_chunk() -> None:
    with SimProcess(["--served-model-name", "engine-chat", *FAST, "--seed", "3"]) as sim, GatewayServer(
        auth_yaml() + f'store: "memory://"\npools:\n  chat: {{endpoints: [{sim.base_url}]}}\n'
    ) as gw:
        body = {"messages": [{"role": "user", "content": "same text twice"}], "max_tokens": 25, "stream": True}
        via_gw = _stream_raw(gw.base_url + "/chat/completions", {**body, "model": "chat"})
        direct = _stream_raw(sim.base_url + "/chat/completions",
                             {**body, "model": "engine-chat", "stream_options": {"include_usage": True}})  # fmt: skip
        events = direct.split(b"\n\n")
        usage_events = [e for e in events if b'"choices":[]' in e and b'"usage":{' in e]
        assert len(usage_events) == 1
        without_usage = b"\n\n".join(e for e in events if e not in usage_events)
        # Only the per-response id and creation time differ between the two runs, and the
        # model name, which the gateway rewrites to the name the client asked for.
        assert _normalise(via_gw) == _normalise(without_usage)
        asked = _stream_raw(gw.base_url + "/chat/completions",
                            {**body, "model": "chat", "stream_options": {"include_usage": True}})  # fmt: skip
        assert _normalise(asked) == _normalise(direct)
        _flush(gw, requests=2)
        assert _totals(_usage(gw.url))["estimated_requests"] == 0


def _normalise(raw: bytes) -> bytes:
    raw = re.sub(rb'"id":"[^"]*"', b'"id":"X"', raw)
    raw = re.sub(rb'"model":"(chat|engine-chat)"', b'"model":"M"', raw)
    return re.sub(rb'"created":\d+', b'"created":0', raw)


# --- keys, limits, budgets through the gateway ---------------------------------------------


@pytest.fixture(scope="module")
def chat_sim() -> Iterator[SimProcess]:
    with SimProcess(["--served-model-name", "engine-chat", *FAST]) as sim:
        yield sim


def test_key_create_use_rotate_revoke_with_the_cli(
    chat_sim: SimProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = auth_yaml() + f'store: "sqlite:///{tmp_path}/u.db"\npools:\n  chat: {{endpoints: [{chat_sim.base_url}]}}\n'
    with GatewayServer(cfg) as gw:
        conn = ["--url", gw.url, "--admin-key", ADMIN_KEY]
        assert cli.main(["keys", "create", "--name", "team-a", "--models", "chat,other*", "--rpm", "600",
                         "--tpm", "100000", "--budget", "5000000/month", "--expires", "2099-01-01", *conn]) == 0
        secret = capsys.readouterr().out.strip()
        with _client(gw, secret) as c:
            r = c.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5)  # fmt: skip
            assert r.headers["x-ratelimit-limit-requests"] == "600"
            assert r.headers["x-ratelimit-remaining-requests"] == "599"
            assert r.headers["x-ratelimit-limit-tokens"] == "100000"
        assert cli.main(["keys", "list", *conn]) == 0
        listing = capsys.readouterr().out
        assert "team-a" in listing and "dynamic" in listing and "client" in listing and secret not in listing
        assert cli.main(["keys", "rotate", "team-a", *conn]) == 0
        rotated = capsys.readouterr().out.strip()
        assert httpx.get(gw.base_url + "/models", headers={"authorization": f"Bearer {secret}"}).status_code == 401
        assert httpx.get(gw.base_url + "/models", headers={"authorization": f"Bearer {rotated}"}).status_code == 200
        assert cli.main(["keys", "revoke", "team-a", *conn]) == 0
        assert capsys.readouterr().out.strip() == "revoked key 'team-a'"
        assert httpx.get(gw.base_url + "/models", headers={"authorization": f"Bearer {rotated}"}).status_code == 401
        # A client key cannot manage keys.
        assert httpx.get(gw.url + "/admin/keys", headers=CLIENT).status_code == 403
        _flush(gw, requests=1)
        assert cli.main(["usage", "--by", "key", "--since", "1h", "--csv", *conn]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("key,requests,") and any(line.startswith("team-a,1,") for line in out)


def test_budget_and_headers_through_the_gateway(chat_sim: SimProcess) -> None:
    cfg = f"""
auth:
  admin_key_sha256: {sha(ADMIN_KEY)}
  keys:
    - {{name: capped, key_sha256: {sha("sk-capped")}, budget: "120", rpm: 1000}}
store: "memory://"
pools:
  chat: {{endpoints: [{chat_sim.base_url}]}}
"""
    with GatewayServer(cfg) as gw:
        body = {"model": "chat", "messages": [{"role": "user", "content": "spend"}], "max_tokens": 30}
        hdr = {"authorization": "Bearer sk-capped"}
        answers = []
        for _ in range(10):
            answers.append(httpx.post(gw.base_url + "/chat/completions", json=body, headers=hdr))
            if answers[-1].status_code == 429:
                break
        first, last = answers[0], answers[-1]
        assert first.status_code == 200 and last.status_code == 429 and len(answers) > 2
        assert first.headers["x-ratelimit-limit-requests"] == "1000"
        assert first.headers["x-ratelimit-remaining-requests"] == "999"
        assert last.json()["error"]["code"] == "insufficient_quota"
        assert last.headers["x-should-retry"] == "false" and "retry-after" not in last.headers


# --- no record lost ------------------------------------------------------------------------


def test_sigterm_under_load_loses_no_record(tmp_path: Path) -> None:
    with SimProcess(["--served-model-name", "engine-chat", "--ttft-ms", "5", "--itl-ms", "4"]) as sim:
        cfg = auth_yaml() + f"""
server: {{drain_seconds: 20}}
metering: {{flush_interval: 5}}
pools:
  chat: {{endpoints: [{sim.base_url}]}}
"""  # default store: sqlite:///var/usage.db in the gateway's working directory
        gw = GatewayProcess(cfg, tmp_path).start()
        answered: set[str] = set()
        sent: set[str] = set()
        lock = threading.Lock()
        stop = threading.Event()

        def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                rid = f"load-{w}-{i}"
                i += 1
                with lock:
                    sent.add(rid)
                hdr = {**CLIENT, "x-request-id": rid, "connection": "close"}
                body = {"model": "chat", "messages": [{"role": "user", "content": rid}], "max_tokens": 60,
                        "stream": w % 2 == 0}  # fmt: skip
                try:
                    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=hdr, timeout=30) as r:
                        with lock:
                            answered.add(rid)  # the gateway took it: it must be in the ledger
                        for _ in r.iter_raw():
                            pass
                except httpx.HTTPError:
                    if not stop.is_set():
                        stop.set()  # the gateway stopped accepting

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(24)]
        for t in threads:
            t.start()
        assert wait_until(lambda: len(answered) >= 60, timeout=20)
        gw.signal(signal.SIGTERM)
        assert gw.wait(60) == 0, gw.log_tail()  # a clean SIGTERM exits 0 (issue #14)
        assert "shutdown complete" in gw.log_tail()
        stop.set()
        for t in threads:
            t.join(30)
        conn = sqlite3.connect(tmp_path / "var" / "usage.db")
        ids = {r[0] for r in conn.execute("SELECT request_id FROM usage")}
        p, c = conn.execute("SELECT SUM(prompt_tokens), SUM(completion_tokens) FROM usage").fetchone()
        conn.close()
        assert answered <= ids <= sent, (len(answered - ids), len(ids - sent))
        assert len(ids) >= 60
        # Every request finished during the drain, so the engine's own counts match too.
        assert (p, c) == _engine_totals(sim)


def test_redis_stopped_mid_run_loses_no_record_once_back(chat_sim: SimProcess) -> None:
    with RedisServer(persistent=True) as rs:
        cfg = auth_yaml() + f"""
store: "{rs.url}"
metering: {{flush_interval: 0.05}}
pools:
  chat: {{endpoints: [{chat_sim.base_url}]}}
"""
        with GatewayServer(cfg) as gw, _client(gw) as c:
            msgs = [{"role": "user", "content": "keep going"}]
            for _ in range(10):
                c.chat.completions.create(model="chat", messages=msgs, max_tokens=5)
            assert wait_until(lambda: gw.state.meter.recorded == 10 and gw.state.meter.buffered == 0)
            rs.stop()
            t0 = time.monotonic()
            for _ in range(20):  # requests keep working, and are not slowed, while the store is down
                list(c.chat.completions.create(model="chat", messages=msgs, max_tokens=5, stream=True))
            assert time.monotonic() - t0 < 5
            assert wait_until(lambda: gw.state.meter.writer.failures > 0)
            assert wait_until(lambda: gw.state.meter.recorded == 30)
            assert gw.state.meter.buffered == 20
            rs.start()
            assert wait_until(lambda: gw.state.meter.buffered == 0, timeout=20)
            t = _totals(_usage(gw.url))
            assert t["requests"] == 30 and t["estimated_requests"] == 0


def test_usage_api_formats_and_errors(chat_sim: SimProcess) -> None:
    cfg = auth_yaml() + f'store: "memory://"\npools:\n  chat: {{endpoints: [{chat_sim.base_url}]}}\n'
    with GatewayServer(cfg) as gw, _client(gw) as c:
        for user in ("ann", "ann", "bob"):
            c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3, user=user)
        _flush(gw, requests=3)
        r = httpx.get(gw.url + "/admin/usage", params={"group_by": "user", "since": "1h"}, headers=ADMIN)
        doc = r.json()
        assert doc["object"] == "list" and doc["group_by"] == "user"
        rows = {row["user"]: row for row in doc["data"]}
        assert rows["ann"]["requests"] == 2 and rows["bob"]["requests"] == 1
        assert set(rows["ann"]) == {"user", "requests", "prompt_tokens", "completion_tokens", "total_tokens",
                                    "estimated_requests", "audio_seconds"}  # fmt: skip
        day = httpx.get(gw.url + "/admin/usage", params={"group_by": "day", "format": "csv"}, headers=ADMIN)
        assert day.headers["content-type"].startswith("text/csv")
        lines = day.text.splitlines()
        assert lines[0].startswith("day,requests") and lines[1].split(",")[1] == "3"
        future = httpx.get(gw.url + "/admin/usage", params={"since": "2099-01-01"}, headers=ADMIN).json()
        assert future["data"] == []
        for bad in ({"group_by": "colour"}, {"since": "last tuesday"}, {"format": "xml"}):
            err = httpx.get(gw.url + "/admin/usage", params=bad, headers=ADMIN)
            assert err.status_code == 400 and err.json()["error"]["param"] in ("group_by", "since", "format")
        assert httpx.get(gw.url + "/admin/usage", headers=CLIENT).status_code == 403
        assert httpx.get(gw.url + "/admin/usage").status_code == 401
        bad_key = httpx.post(gw.url + "/admin/keys", json={"name": "x", "rpm": 0}, headers=ADMIN)
        assert bad_key.status_code == 400
