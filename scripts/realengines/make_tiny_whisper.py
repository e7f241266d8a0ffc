"""Build the deterministic tiny Whisper model the real transcription tests run on, offline.

Run with the vLLM environment's Python (it has torch, transformers, tokenizers):

    python make_tiny_whisper.py --out DIR

writes DIR/hf (a Hugging Face Whisper directory: config, weights, tokenizer, feature
extractor) and DIR/expect.json (what the model transcribes, and its token counts).

Why the output is predictable whatever the audio: every attention `out_proj` (self and
cross) is zero and the decoder's positional embeddings are zero, so the decoder's residual
stream at a position is its token's embedding plus what the one decoder MLP adds. Chain
tokens each own one residual axis; the MLP maps a chain token's axis to its successor's,
and the output projection is tied to the embeddings (as in every Whisper), so the next
token depends only on the current one:

    <|startoftranscript|> -> <|en|>   (vLLM's language detection, when no language is sent)
    <|notimestamps|> (the prompt's last token) -> TEXT[0] -> ... -> TEXT[-1] -> <|endoftext|>

The encoder keeps its seeded random weights: it runs on the real log-mel features (so the
audio path is exercised end to end), but nothing it says reaches the text.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

BUILD_VERSION = "1"  # bump when anything below changes the model

EOT, SOT = "<|endoftext|>", "<|startoftranscript|>"
TRANSCRIBE, TRANSLATE, NO_TIMESTAMPS = "<|transcribe|>", "<|translate|>", "<|notimestamps|>"
# Whisper's special tokens in its own order: language tokens follow SOT, then the tasks.
SPECIAL = (
    EOT,
    SOT,
    *(f"<|{code}|>" for code in LANGUAGES),
    TRANSLATE,
    TRANSCRIBE,
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    NO_TIMESTAMPS,
)
TEXT = (" Hello", " from", " the", " tiny", " whisper", ".")  # added tokens: one step each
EXPECT_TEXT = "".join(TEXT)

D_MODEL = 64
FFN = 128
SAMPLE_RATE = 16000
MEL_BINS = 80
NOISE = 0.02
NOISE_FROM = 16  # axes below this belong to chain tokens; noise lives above
MLP_GAIN = 20.0  # how far the MLP pushes the residual towards the successor's axis
LN_GAIN = 10.0  # final layer norm weight: the logit margin of the chain

WORDS = ("the", "a", "speech", "audio", "text", "model", "hello", "world", "sound", "voice",
         "tiny", "test", "gateway", "engine", "transcribe", "whisper", "one", "two", "three")  # fmt: skip


def corpus(seed: int = 7, lines: int = 2000) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + rng.choice([".", ",", "?", "!"])
            for _ in range(lines)]  # fmt: skip


def build_tokenizer(dest: Path) -> WhisperTokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = WhisperTokenizer(vocab=model["vocab"], merges=merges, model_max_length=448)
    tok.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL[1:]]}
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TEXT])
    tok.save_pretrained(dest)
    return tok


def token_id(tok: WhisperTokenizer, text: str) -> int:
    tid = tok.convert_tokens_to_ids(text)
    if not isinstance(tid, int) or tid == tok.unk_token_id and text != EOT:
        raise SystemExit(f"{text!r} is not a token")
    return tid


def successors(tok: WhisperTokenizer) -> dict[int, int]:
    chain = [NO_TIMESTAMPS, *TEXT, EOT]
    nxt = {token_id(tok, a): token_id(tok, b) for a, b in zip(chain, chain[1:], strict=False)}
    nxt[token_id(tok, SOT)] = token_id(tok, "<|en|>")
    return nxt


def build_model(tok: WhisperTokenizer, dest: Path) -> WhisperForConditionalGeneration:
    eot, sot = token_id(tok, EOT), token_id(tok, SOT)
    cfg = WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=MEL_BINS,
        d_model=D_MODEL,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        max_source_positions=1500,  # 30 s of audio: Whisper's fixed window
        max_target_positions=448,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=[],
        begin_suppress_tokens=[],
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg).eval()
    nxt = successors(tok)
    states = sorted(set(nxt) | set(nxt.values()))
    axis = {t: i for i, t in enumerate(states)}
    assert len(states) <= NOISE_FROM
    gen = torch.Generator().manual_seed(1)
    dec = model.model.decoder
    with torch.no_grad():
        vocab = len(tok)
        emb = torch.zeros(vocab, D_MODEL)
        emb[:, NOISE_FROM:] = NOISE * torch.randn(vocab, D_MODEL - NOISE_FROM, generator=gen)
        for t in states:
            emb[t] = 0.0
            emb[t, axis[t]] = 1.0
        dec.embed_tokens.weight.copy_(emb)
        dec.embed_positions.weight.zero_()
        layer = dec.layers[0]
        for attn in (layer.self_attn, layer.encoder_attn):
            attn.out_proj.weight.zero_()
            attn.out_proj.bias.zero_()
        # Hidden unit k fires for chain token k only: after the pre-MLP layer norm a one-axis
        # vector is ~sqrt(63) = 7.9 there, every other token's entry is about -0.13.
        fc1, fc2 = layer.fc1, layer.fc2
        fc1.weight.zero_()
        fc1.bias.fill_(-4.0)
        fc2.weight.zero_()
        fc2.bias.zero_()
        layer.final_layer_norm.weight.fill_(1.0)
        layer.final_layer_norm.bias.zero_()
        fired = float(torch.nn.functional.gelu(torch.tensor(63**0.5 - 4.0)))
        for k, (t, s) in enumerate(nxt.items()):
            fc1.weight[k, axis[t]] = 1.0
            fc2.weight[axis[s], k] = MLP_GAIN / fired
            fc2.weight[axis[t], k] = -MLP_GAIN / fired
        dec.layer_norm.weight.fill_(LN_GAIN)
        dec.layer_norm.bias.zero_()
    gc = model.generation_config
    gc.decoder_start_token_id, gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = sot, eot, eot, eot
    gc.max_length = 448
    gc.suppress_tokens, gc.begin_suppress_tokens = [], []
    gc.forced_decoder_ids = None
    gc.lang_to_id = {f"<|{c}|>": token_id(tok, f"<|{c}|>") for c in LANGUAGES}
    gc.task_to_id = {"transcribe": token_id(tok, TRANSCRIBE), "translate": token_id(tok, TRANSLATE)}
    gc.no_timestamps_token_id = token_id(tok, NO_TIMESTAMPS)
    gc.is_multilingual = True
    model.save_pretrained(dest, safe_serialization=True)
    return model


def tone(seconds: float = 1.5, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def check(model: WhisperForConditionalGeneration, tok: WhisperTokenizer, fe: WhisperFeatureExtractor) -> dict[str, object]:
    """Decode greedily as vLLM will (its prompt, its stop) and insist on the expected text."""
    feats = fe(tone(), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    prompt = [token_id(tok, t) for t in (SOT, "<|en|>", TRANSCRIBE, NO_TIMESTAMPS)]
    ids = torch.tensor([prompt])
    eot = token_id(tok, EOT)
    out: list[int] = []
    with torch.no_grad():
        enc = model.model.encoder(feats).last_hidden_state
        for _ in range(20):
            logits = model(encoder_outputs=(enc,), decoder_input_ids=ids).logits[0, -1]
            top2 = torch.topk(logits, 2)
            nxt = int(top2.indices[0])
            margin = float(top2.values[0] - top2.values[1])
            if margin < 5.0:
                raise SystemExit(f"margin {margin:.2f} too small after {out}")
            out.append(nxt)
            if nxt == eot:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        lang = int(model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([[prompt[0]]])).logits[0, -1].argmax())
    text = tok.decode(out, skip_special_tokens=True)
    if text != EXPECT_TEXT or out[-1] != eot or tok.convert_ids_to_tokens(lang) != "<|en|>":
        raise SystemExit(f"unexpected decode: {text!r} {out} lang={tok.convert_ids_to_tokens(lang)}")
    return {"completion_tokens": len(out), "prompt_tokens": len(prompt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    hf = args.out / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(hf)
    fe = WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=SAMPLE_RATE, chunk_length=30)
    WhisperProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(hf)
    tok = WhisperTokenizer.from_pretrained(hf)  # check it as the engine will load it
    model = build_model(tok, hf)
    stats = check(model, tok, fe)
    expect = {"build_version": BUILD_VERSION, "text": EXPECT_TEXT, "language": "en", **stats}
    (args.out / "expect.json").write_text(json.dumps(expect, indent=2) + "\n")
    print(json.dumps({"hf": str(hf), **expect}))


if __name__ == "__main__":
    main()
