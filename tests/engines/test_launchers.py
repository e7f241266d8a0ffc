"""Golden launches: every deployment in shared/deployments.md 1-7, written as a config in
config/examples/, produces exactly the argv and env the team runs today."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway import config as config_mod
from gateway.config import EnginesConfig, PoolConfig
from gateway.engines import launchers
from gateway.engines.gpus import GpuInventory
from gateway.engines.launchers import Launch, LaunchError

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/svc",
    "XPU_DUMMY_EVENT": "1",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3",
}
PORT = 30000


def launches(name: str, environ: dict[str, str] | None = None) -> list[Launch]:
    """Launches for a config, with devices assigned as the supervisor does (config order)."""
    cfg = config_mod.load(EXAMPLES / name, environ if environ is not None else {})
    inv = GpuInventory(cfg.engines.gpus)
    out = []
    port = PORT
    for pool_name, pool in cfg.pools.items():
        for spec in pool.spawn:
            for i in range(spec.replicas):
                devices = inv.allocate(spec.gpus_per_replica, f"{pool_name}/{spec.engine}-{i}")
                req = launchers.request_for(pool_name, pool, spec, cfg.engines, port, devices)
                out.append(launchers.build(req, BASE_ENV))
                port += 1
    return out


def test_1_vllm_tp2_on_xpus_with_vendor_env_and_unset() -> None:
    [launch] = launches("01-vllm-tp2-xpu.yaml")
    assert launch.argv == [
        "vllm", "serve", "/data/ssd3/models/Qwen3-32B",
        "--served-model-name", "qwen3-32b",
        "--host", "127.0.0.1", "--port", "30000",
        "--tensor-parallel-size", "2",
        "--max-model-len", "32768", "--gpu-memory-utilization", "0.95", "--dtype", "float16",
        "--max_num_seqs", "400", "--max_num_batched_tokens", "32768", "--block-size", "128",
        "--distributed-executor-backend", "mp", "--no-enable-prefix-caching", "--no-enable-chunked-prefill",
        "--trust-remote-code",
        "--compilation-config", '{"cudagraph_capture_sizes":[1,2,4,8,16,32,64,128,256,400]}',
    ]  # fmt: skip
    env = launch.env
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["XPU_VISIBLE_DEVICES"] == "0,1"
    assert env["VLLM_USE_V1"] == "1" and env["BKCL_FORCE_SYNC"] == "1"
    assert "XPU_DUMMY_EVENT" not in env
    assert env["PATH"] == "/usr/bin:/bin" and env["HOME"] == "/home/svc"
    assert launch.health_path == "/health"
    assert (launch.metric_running, launch.metric_waiting) == (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
    )


def test_2_vllm_embedding_keeps_users_tp_flag_once() -> None:
    [launch] = launches("02-vllm-embedding-tp4.yaml")
    assert launch.argv == [
        "vllm", "serve", "/data/dev/models_saved/deployed_embedding",
        "--served-model-name", "qwen3-embedding",
        "--host", "127.0.0.1", "--port", "30000",
        "--task", "embed", "--max-model-len", "512", "--gpu-memory-utilization", "0.5", "--dtype", "half",
        "--tensor-parallel-size", "4", "--max-num-batched-tokens", "8192", "--max-num-seqs", "16",
        "--trust-remote-code",
    ]  # fmt: skip
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert launch.env["XPU_DUMMY_EVENT"] == "1"  # only unset when asked


def test_3_vllm_tool_calling_and_reasoning_pools() -> None:
    parsed, raw = launches("03-vllm-tools-reasoning.yaml")
    assert parsed.argv == [
        "vllm", "serve", "Qwen/Qwen3-8B", "--served-model-name", "qwen3-8b",
        "--host", "127.0.0.1", "--port", "30000", "--tensor-parallel-size", "1",
        "--max-model-len", "8k", "--dtype", "bfloat16", "--gpu-memory-utilization", "0.8",
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--enable-reasoning", "--reasoning-parser", "deepseek_r1",
    ]  # fmt: skip
    assert raw.argv == [
        "vllm", "serve", "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B", "--served-model-name", "ds-qwen3-8b",
        "--host", "127.0.0.1", "--port", "30001", "--tensor-parallel-size", "1",
        "--max-model-len", "8k", "--dtype", "bfloat16", "--gpu-memory-utilization", "0.8",
    ]  # fmt: skip
    assert (parsed.env["CUDA_VISIBLE_DEVICES"], raw.env["CUDA_VISIBLE_DEVICES"]) == ("0", "1")


def test_4_one_model_on_three_engines_with_disjoint_devices() -> None:
    sglang, vllm, lmdeploy = launches("04-three-engines-one-pool.yaml")
    name, path = "DeepSeek-R1-Distill-Qwen-32B", "/data/models/DeepSeek-R1-Distill-Qwen-32B"
    assert sglang.argv == [
        "python3", "-m", "sglang.launch_server", "--model-path", path, "--served-model-name", name,
        "--host", "127.0.0.1", "--port", "30000", "--tp-size", "4", "--enable-metrics",
    ]  # fmt: skip
    assert vllm.argv == [
        "vllm", "serve", path, "--served-model-name", name, "--host", "127.0.0.1", "--port", "30001",
        "--tensor-parallel-size", "4", "--max-model-len", "32768", "--enforce-eager",
    ]  # fmt: skip
    assert lmdeploy.argv == [
        "lmdeploy", "serve", "api_server", path, "--server-name", "127.0.0.1", "--server-port", "30002",
        "--model-name", name, "--tp", "4", "--enable-metrics",
    ]  # fmt: skip
    assert [x.env["CUDA_VISIBLE_DEVICES"] for x in (sglang, vllm, lmdeploy)] == [
        "0,1,2,3",
        "4,5,6,7",
        "8,9,10,11",
    ]
    assert (
        sglang.metric_running == "sglang:num_running_reqs"
        and sglang.metric_waiting == "sglang:num_queue_reqs"
    )
    assert lmdeploy.metric_running == "lmdeploy:num_requests_running"
    assert lmdeploy.metric_waiting == "lmdeploy:num_requests_waiting"


def test_5_sglang_gets_its_own_api_key() -> None:
    [launch] = launches("05-sglang-api-key.yaml")
    assert launch.argv == [
        "python3", "-m", "sglang.launch_server", "--model-path", "/data/models/DeepSeek-R1-Distill-Llama-70B",
        "--served-model-name", "DeepSeek-70B", "--host", "127.0.0.1", "--port", "30000", "--tp-size", "8",
        "--api-key", "token-abc123", "--enable-metrics", "--mem-fraction-static", "0.8", "--dtype", "bfloat16",
    ]  # fmt: skip
    assert launch.api_key == "token-abc123"
    assert "token-abc123" not in launch.display_argv()
    [from_env] = launches("05-sglang-api-key.yaml", {"SGLANG_API_KEY": "sk-real"})
    assert from_env.argv[from_env.argv.index("--api-key") + 1] == "sk-real"


def test_6_multinode_engine_is_one_external_endpoint() -> None:
    assert launches("06-multinode-external.yaml") == []
    cfg = config_mod.load(EXAMPLES / "06-multinode-external.yaml", {"SGLANG_HEAD": "10.1.2.3"})
    assert cfg.pools["deepseek-r1"].endpoints == ["http://10.1.2.3:30000/v1"]
    assert cfg.engines.endpoint_health.path == "/health"


def test_7_data_parallel_replicas_get_disjoint_device_sets() -> None:
    r0, r1 = launches("07-data-parallel-replicas.yaml")
    common = ["python3", "-m", "sglang.launch_server", "--model-path", "/data/models/Qwen2.5-7B-Instruct",
              "--served-model-name", "qwen2.5-7b", "--host", "127.0.0.1"]  # fmt: skip
    assert r0.argv == [*common, "--port", "30000", "--tp-size", "2", "--enable-metrics"]
    assert r1.argv == [*common, "--port", "30001", "--tp-size", "2", "--enable-metrics"]
    assert (r0.env["CUDA_VISIBLE_DEVICES"], r1.env["CUDA_VISIBLE_DEVICES"]) == ("0,1", "2,3")


# --- rules shared by the launchers ---


def one(
    pool_yaml: str, port: int = 20000, devices: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Launch:
    import yaml

    pool = PoolConfig.model_validate(yaml.safe_load(pool_yaml))
    req = launchers.request_for("p", pool, pool.spawn[0], EnginesConfig(gpus=list(devices)), port, devices)
    return launchers.build(req, env or {})


def test_llamacpp_embedding_metrics_and_key() -> None:
    launch = one("{engine: llamacpp, model: /m/e.gguf, kind: embedding, api_key: k1}")
    assert launch.argv == [
        "llama-server", "-m", "/m/e.gguf", "--alias", "p", "--host", "127.0.0.1", "--port", "20000",
        "--api-key", "k1", "--metrics", "--embedding",
    ]  # fmt: skip
    assert (launch.metric_running, launch.metric_waiting) == (
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
    )


def test_sglang_embedding_and_user_tp_spelling() -> None:
    launch = one(
        "{engine: sglang, model: /m, kind: embedding, gpus_per_replica: 2, args: [--tp, '2']}",
        devices=("0", "1"),
    )
    assert launch.argv == [
        "python3", "-m", "sglang.launch_server", "--model-path", "/m", "--served-model-name", "p",
        "--host", "127.0.0.1", "--port", "20000", "--enable-metrics", "--is-embedding", "--tp", "2",
    ]  # fmt: skip


def test_lmdeploy_uses_api_keys_plural() -> None:
    launch = one("{engine: lmdeploy, model: /m, api_key: abc}")
    assert launch.argv[-3:] == ["--api-keys", "abc", "--enable-metrics"]
    assert launch.display_argv()[-3:] == ["--api-keys", "***", "--enable-metrics"]


def test_sim_launch_uses_this_interpreter() -> None:
    launch = one("{engine: sim, model: /m/x, served_names: [a, b], kind: embedding, args: [--ttft-ms, 1]}")
    assert launch.argv == [
        sys.executable, "-m", "gateway.sim", "--host", "127.0.0.1", "--port", "20000",
        "--served-model-name", "a", "b", "--model", "/m/x", "--embedding", "--ttft-ms", "1",
    ]  # fmt: skip
    assert launch.served_names == ["a", "b"]


def test_vllm_served_names_and_key_given_in_args_are_respected() -> None:
    launch = one("{engine: vllm, model: /m, args: ['--served-model-name', x, y, '--api-key=s3']}")
    assert launch.argv == ["vllm", "serve", "/m", "--host", "127.0.0.1", "--port", "20000",
                           "--served-model-name", "x", "y", "--api-key=s3"]  # fmt: skip
    assert launch.served_names == ["x", "y"] and launch.api_key == "s3"
    assert launch.display_argv()[-1] == "--api-key=***"


def test_command_placeholders_are_literal() -> None:
    launch = one(
        "{engine: command, model: /m, gpus_per_replica: 1, command: [srv, --listen, '{host}:{port}', "
        "--name, '{served_name}', --w, '{model}', --dev, '{devices}'], args: ['{\"a\": 1}']}",
        devices=("3",),
    )
    assert launch.argv == [
        "srv",
        "--listen",
        "127.0.0.1:20000",
        "--name",
        "p",
        "--w",
        "/m",
        "--dev",
        "3",
        '{"a": 1}',
    ]
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "3"
    assert launch.metric_running is None


def test_command_as_program_prefix_for_other_engines() -> None:
    launch = one("{engine: sglang, model: /m, command: [/opt/sgl/bin/python, -m, sglang.launch_server]}")
    assert launch.argv[:5] == ["/opt/sgl/bin/python", "-m", "sglang.launch_server", "--model-path", "/m"]


def test_gateway_owns_host_and_port() -> None:
    with pytest.raises(LaunchError, match="--port"):
        one("{engine: vllm, model: /m, args: [--port, '9000']}")
    with pytest.raises(LaunchError, match="--server-port"):
        one("{engine: lmdeploy, model: /m, args: ['--server-port=1']}")


def test_env_rules_user_device_env_wins_and_unset_removes_inherited() -> None:
    launch = one(
        "{engine: vllm, model: /m, gpus_per_replica: 2, env: {CUDA_VISIBLE_DEVICES: '6,7', X: 1}, unset_env: [DROP]}",
        devices=("0", "1"),
        env={"DROP": "1", "KEEP": "2"},
    )
    assert launch.env == {"KEEP": "2", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "6,7", "X": "1"}
    no_gpu = one("{engine: vllm, model: /m}", env={"CUDA_VISIBLE_DEVICES": "0"})
    assert no_gpu.env["CUDA_VISIBLE_DEVICES"] == "0"  # gpus_per_replica 0: inherited, untouched
    assert "--tensor-parallel-size" not in no_gpu.argv


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_gateway_check_passes_on_every_example(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(["check", "--config", str(path)]) == 0
    assert ": ok (" in capsys.readouterr().out


def test_examples_cover_deployments_1_to_9() -> None:
    assert [p.name[:2] for p in sorted(EXAMPLES.glob("*.yaml"))] == ["01", "02", "03", "04", "05", "06", "07", "08", "09"]


def test_sleep_mode_adds_the_flag_and_dev_mode_env() -> None:
    launch = one("{engine: vllm, model: /m, sleep: 1}")
    assert launch.argv[-1] == "--enable-sleep-mode" and launch.env["VLLM_SERVER_DEV_MODE"] == "1"
    sim = one("{engine: sim, model: /m, sleep: 2}")
    assert "--enable-sleep-mode" in sim.argv and sim.env["VLLM_SERVER_DEV_MODE"] == "1"
    plain = one("{engine: vllm, model: /m}")
    assert "--enable-sleep-mode" not in plain.argv and "VLLM_SERVER_DEV_MODE" not in plain.env
    # The user's own env wins (a deployment that must not expose the dev endpoints).
    off = one("{engine: vllm, model: /m, sleep: 1, env: {VLLM_SERVER_DEV_MODE: '0'}}")
    assert off.env["VLLM_SERVER_DEV_MODE"] == "0"


def test_rerank_and_transcription_kinds_get_their_engine_flags() -> None:
    vllm = one("{engine: vllm, model: /m, kind: rerank}")
    assert vllm.argv[-4:] == ["--runner", "pooling", "--convert", "classify"]
    # The user's own task/runner choice (older vLLM: `--task score`) wins: nothing is added.
    assert "--convert" not in one("{engine: vllm, model: /m, kind: rerank, args: [--task, score]}").argv
    assert "--runner" not in one("{engine: vllm, model: /m, kind: transcription}").argv
    sim = one("{engine: sim, model: /m, kind: rerank}")
    assert sim.argv[-4:] == ["--runner", "pooling", "--convert", "classify"]
    assert one("{engine: sim, model: /m, kind: transcription}").argv[-1] == "--transcription"
