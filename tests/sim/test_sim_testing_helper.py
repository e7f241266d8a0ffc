"""The reusable SimProcess helper itself: explicit ports, stop(), metrics parsing."""

from __future__ import annotations

from gateway.sim.metrics import parse_prometheus
from gateway.sim.testing import SimProcess, free_port


def test_explicit_port_and_stop() -> None:
    port = free_port()
    sim = SimProcess(["--served-model-name", "p"], port=port)
    try:
        assert sim.port == port and sim.base_url == f"http://127.0.0.1:{port}/v1" and sim.alive()
        assert sim.state()["pid"] == sim.pid and sim.state()["served"] == ["p"]
        assert sim.stop() == 0  # SIGTERM: graceful exit
        assert not sim.alive() and sim.stop() == 0  # idempotent
    finally:
        sim.close()
    assert not sim.log_path.exists()


def test_parse_prometheus() -> None:
    text = "\n".join([
        "# TYPE x counter",
        'a{model_name="m",finished_reason="stop"} 2.0',
        'a{model_name="m",finished_reason="length"} 3.0',
        "b 1.5",
        "",
    ])
    m = parse_prometheus(text)
    assert m["a"] == 5.0 and m["b"] == 1.5 and m['a{model_name="m",finished_reason="stop"}'] == 2.0
