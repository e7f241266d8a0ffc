"""Estimates count with the model's own tokenizer.json when the pool knows it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway import tokens
from gateway.config import PoolConfig
from gateway.metering import estimate
from gateway.metering.model_tokenizer import ModelTokenizer


def _word_level_tokenizer(path: Path) -> None:
    """A tokenizer.json whose vocabulary is whole words: counts differ from cl100k's."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "Quixotic": 1, "zephyrs": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def test_counts_with_the_model_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    _word_level_tokenizer(path)
    model = ModelTokenizer(str(path))
    text = "Quixotic zephyrs jinx pterodactyls"
    assert model.count_text(text) == 4  # one per word
    assert tokens.count_text(text) != 4
    assert model.is_model_tokenizer
    body = {"prompt": text}
    assert estimate.prompt_tokens("completions", body, model.count_text) == 4
    delivered = [b'data: {"choices":[{"index":0,"text":" Quixotic"}]}\n\ndata: {"choices":[{"index":0,"text":" zephyrs"}]}\n\n']
    assert estimate.completion(delivered, count=model.count_text) == (True, 2)


@pytest.mark.parametrize("content", [None, b"not json"])
def test_missing_or_broken_file_falls_back_to_cl100k(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_bytes(content)
    model = ModelTokenizer(str(path))
    assert model.count_text("hello world") == tokens.count_text("hello world")
    assert not model.is_model_tokenizer


def test_pool_defaults() -> None:
    vllm = PoolConfig.model_validate({"engine": "vllm", "model": "/models/qwen/"})
    assert vllm.asks_continuous_usage and vllm.tokenizer_path == "/models/qwen/tokenizer.json"
    gguf = PoolConfig.model_validate({"engine": "llamacpp", "model": "/m/tiny.gguf"})
    assert not gguf.asks_continuous_usage and gguf.tokenizer_path is None
    ext = PoolConfig.model_validate({"endpoints": ["http://127.0.0.1:1/v1"]})
    assert not ext.asks_continuous_usage and ext.tokenizer_path is None
    forced = PoolConfig.model_validate(
        {"endpoints": ["http://127.0.0.1:1/v1"], "continuous_usage": True, "tokenizer": "/t.json"}
    )
    assert forced.asks_continuous_usage and forced.tokenizer_path == "/t.json"
    assert orjson.dumps(forced.model_dump())  # still a plain config
