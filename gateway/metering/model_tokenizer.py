"""A model's own tokenizer for usage estimates, with the bundled cl100k as the fallback.

Estimates (streams cut short before the engine's usage arrived) count tokens with the
model's `tokenizer.json` when the gateway knows it (spawned engines: from the pool's
`model:` directory or its `tokenizer:` option), so they match what the engine counted;
otherwise with cl100k, which can be off by tens of percent on another model's text.
Loading parses a multi-megabyte file, so it happens on first use, which is the meter's
flush task in a worker thread, never the event loop; one instance lives per pool.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from gateway import tokens

log = logging.getLogger("gateway.metering")


class ModelTokenizer:
    """Counts text tokens with a `tokenizer.json` (via `tokenizers`), or cl100k without one."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._loaded = False
        self._tok: Any = None  # tokenizers.Tokenizer, imported lazily (heavy import)

    def _tokenizer(self) -> Any:
        if self._loaded:
            return self._tok
        with self._lock:
            if not self._loaded:
                self._tok = self._load()
                self._loaded = True
        return self._tok

    def _load(self) -> Any:
        if self.path is None or not Path(self.path).is_file():
            return None
        try:
            from tokenizers import Tokenizer

            return Tokenizer.from_file(self.path)
        except Exception as e:  # a corrupt or foreign file must not break metering
            log.warning("cannot load tokenizer %s (%s); estimating with cl100k", self.path, e)
            return None

    @property
    def is_model_tokenizer(self) -> bool:
        """Whether counts come from the model's own tokenizer (loads it if not yet)."""
        return self._tokenizer() is not None

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        tok = self._tokenizer()
        if tok is None:
            return tokens.count_text(text)
        # Engines tokenize prompts and count outputs without special tokens added here;
        # the chat template's own tokens are approximated by the caller's framing.
        return len(tok.encode(text, add_special_tokens=False).ids)

