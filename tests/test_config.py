from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config

ROOT = Path(__file__).resolve().parents[1]

BASE = """
auth: {mode: none}
"""


def err(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(config.ConfigError) as e:
        config.loads(text, env or {})
    return str(e.value)


def test_flat_engine_shorthand_error_names_the_place_as_written() -> None:
    msg = err(BASE + "pools:\n  qwen3-32b: {engine: vllm, model: /m, replicas: 0}\n")
    assert msg == "pools.qwen3-32b.replicas: must be >= 1"


def test_unknown_setting_is_rejected_with_its_path() -> None:
    msg = err(BASE + "pools:\n  p: {endpoints: [http://h:1/v1], max_concurency: 3}\n")
    assert "pools.p.max_concurency: unknown setting" in msg


def test_pool_without_backends_and_bad_url() -> None:
    assert "a pool needs" in err(BASE + "pools:\n  p: {kind: chat}\n")
    assert "is not an http(s) URL" in err(BASE + "pools:\n  p: {endpoints: [ftp://x]}\n")


def test_alias_clash_between_pools() -> None:
    msg = err(BASE + "pools:\n  a: {endpoints: [http://h:1/v1], aliases: [x]}\n  b: {endpoints: [http://h:2/v1], aliases: [x]}\n")
    assert "pools.b.aliases: 'x' is already used by pool 'a'" in msg


def test_env_interpolation_and_missing_variable() -> None:
    cfg = config.loads(BASE + "pools:\n  p: {endpoints: [http://h:1/v1], api_key: '${K}'}\n", {"K": "s3cret"})
    assert cfg.pools["p"].api_key == "s3cret"
    cfg = config.loads(BASE + "pools:\n  p: {endpoints: [http://h:1/v1], api_key: '${K:-dflt}'}\n", {})
    assert cfg.pools["p"].api_key == "dflt"
    assert "environment variables not set: K" in err(BASE + "pools:\n  p: {endpoints: ['${K}']}\n")


def test_gpu_inventory_exhaustion_is_refused() -> None:
    text = """
auth: {mode: none}
engines: {gpus: [0, 1, 2]}
pools:
  big: {engine: vllm, model: /m, replicas: 2, gpus_per_replica: 2}
"""
    msg = err(text)
    assert "engines.gpus: pools ask for 4 devices" in msg and "inventory has 3" in msg


def test_keys_mode_needs_keys_or_explicit_none() -> None:
    assert "set `mode: none` explicitly" in err("pools:\n  p: {endpoints: [http://h:1/v1]}\n")
    assert "must be 64 hex characters" in err("auth: {keys: [{name: a, key_sha256: abc}]}\n")


def test_bad_budget_is_a_config_error() -> None:
    msg = err("auth: {keys: [{name: a, key_sha256: %s, budget: 5000/fortnight}]}\n" % ("a" * 64))
    assert msg.startswith("auth.keys.0.budget: budget period must be month, week or day")


def test_invalid_yaml_and_non_mapping() -> None:
    assert "invalid YAML" in err("pools: [unclosed\n")
    assert "mapping" in err("- a\n- b\n")


def test_args_become_strings_json_values_kept() -> None:
    cfg = config.loads(BASE + "pools:\n  p: {engine: vllm, model: /m, args: [--x, 5, --cc, {level: 3}]}\n")
    assert cfg.pools["p"].spawn[0].args == ["--x", "5", "--cc", '{"level":3}']


def test_check_command_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "pools:\n  qwen3-32b: {engine: vllm, model: /m, replicas: 0}\n")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "pools.qwen3-32b.replicas: must be >= 1" in r.stderr
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "--config", str(ROOT / "config/demo.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ok (4 pools" in r.stdout


def test_readme_config_example_is_a_valid_config() -> None:
    """The README's annotated config must stay in step with the schema (unknown keys are errors)."""
    import re

    text = (ROOT / "README.md").read_text()
    m = re.search(r"## Configuration.*?```yaml\n(.*?)```", text, re.S)
    assert m is not None
    cfg = config.loads(m.group(1).replace("<hex>", "a" * 64), {"UPSTREAM_KEY": "k", "GATEWAY_ADMIN_KEY": "a"})
    pool = cfg.pools["qwen3-8b"]
    assert pool.spawn[0].replicas == 2 and pool.endpoints == ["http://10.0.0.7:8000/v1"]
    assert cfg.server.upstream_client == "raw" and cfg.engines.endpoint_health.metrics_interval == 1


def test_on_demand_settings_and_shared_devices() -> None:
    text = """
auth: {mode: none}
engines: {gpus: [0, 1], swap: {policy: fcfs, min_residency: 5}}
pools:
  a: {engine: vllm, model: /a, start: on_demand, sleep: true, idle_timeout: 300, devices: [0]}
  b: {engine: vllm, model: /b, start: on_demand, devices: [0]}
  c: {engine: vllm, model: /c, gpus_per_replica: 1}
"""
    cfg = config.loads(text, {})
    a = cfg.pools["a"].spawn[0]
    assert (a.start, a.sleep, a.idle_timeout, a.devices, a.gpus_per_replica) == ("on_demand", 1, 300, ["0"], 1)
    assert cfg.engines.swap.policy == "fcfs" and cfg.engines.swap.min_residency == 5
    assert cfg.pools["c"].spawn[0].start == "always"  # the default: started at boot


def test_shared_devices_need_on_demand_engines_of_different_pools() -> None:
    base = "auth: {mode: none}\nengines: {gpus: [0, 1]}\npools:\n"
    msg = err(base + "  a: {engine: vllm, model: /a, devices: [0]}\n  b: {engine: vllm, model: /b, start: on_demand, devices: [0]}\n")
    assert "pools.a.spawn.0 and pools.b.spawn.0 share devices 0: only engines with `start: on_demand` can share devices" in msg
    msg = err(base + "  a: {spawn: [{engine: vllm, model: /a, start: on_demand, devices: [0]},"
              " {engine: vllm, model: /a2, start: on_demand, devices: [0, 1]}]}\n")
    assert "engines of one pool cannot take turns" in msg
    assert "pools.a.devices: 7 not in engines.gpus" in err(
        base + "  a: {engine: vllm, model: /a, start: on_demand, devices: [7]}\n"
    )
    # Pinned devices are never handed to unpinned replicas: 1 pinned + 2 asked > 2.
    msg = err(base + "  a: {engine: vllm, model: /a, start: on_demand, devices: [0]}\n"
              "  c: {engine: vllm, model: /c, gpus_per_replica: 2}\n")
    assert "engines.gpus: pools ask for 3 devices" in msg


def test_bad_on_demand_settings_name_their_place() -> None:
    p = "auth: {mode: none}\nengines: {gpus: [0, 1]}\npools:\n  a: "
    assert "pools.a.start: Input should be 'always' or 'on_demand'" in err(p + "{engine: vllm, model: /a, start: lazy}\n")
    assert "pools.a.idle_timeout: must be > 0" in err(p + "{engine: vllm, model: /a, idle_timeout: 0}\n")
    assert "sleep mode is vLLM's (engines vllm, sim), not llamacpp's" in err(p + "{engine: llamacpp, model: /a, sleep: 1}\n")
    assert "pools.a.sleep: Input should be less than or equal to 2" in err(p + "{engine: vllm, model: /a, sleep: 3}\n")
    assert "replicas must be 1" in err(p + "{engine: vllm, model: /a, devices: [0], replicas: 2}\n")
    assert "gpus_per_replica must match" in err(p + "{engine: vllm, model: /a, devices: [0], gpus_per_replica: 2}\n")
    assert "engines.swap.policy" in err("auth: {mode: none}\nengines: {swap: {policy: lifo}}\n")


def test_pool_kinds_are_validated() -> None:
    for kind in ("chat", "embedding", "rerank", "transcription"):
        cfg = config.loads(BASE + f"pools:\n  p: {{kind: {kind}, endpoints: [http://127.0.0.1:9/v1]}}\n", {})
        assert cfg.pools["p"].kind == kind
    msg = err(BASE + "pools:\n  p: {kind: score, endpoints: [http://127.0.0.1:9/v1]}\n")
    assert "kind" in msg and "rerank" in msg and "transcription" in msg
