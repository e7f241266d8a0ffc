"""Simulated vLLM OpenAI-compatible server (`python -m gateway.sim --help`); see README.md."""

from __future__ import annotations

from gateway.sim.config import Faults, SimConfig, build_parser, config_from_args

__all__ = ["Faults", "SimConfig", "build_parser", "config_from_args"]
