"""Build the deterministic tiny Qwen3 model the real-engine tests run on, offline.

Run with the vLLM environment's Python (it has torch, transformers, tokenizers, gguf):

    python make_tiny_model.py --out DIR [--llama-src LLAMA_CPP_SOURCE_DIR]

writes DIR/hf (a normal Hugging Face model directory for vLLM), DIR/tiny.gguf (the same
weights for llama.cpp, when --llama-src is given) and DIR/expect.json (what the model says).

Why the output is predictable: every layer's MLP `down_proj` is zero and so is every
`o_proj` except one attention path, so the residual stream at a position is the token's own
embedding (plus one flag, below). The embeddings put each "chain" token on its own axis and
`lm_head` maps that axis to the token's successor with a large margin, so the next token
depends only on the current one, even when sampling at temperature 1. Whole phrases are
added tokens, so every chain step is exactly one token:

    "\n" (the end of every chat prompt) -> <think> -> REASONING -> </think> -> ANSWER -> <|im_end|>
    any other token, and <|im_end|>      -> CYCLE[0] -> CYCLE[1] -> ... -> CYCLE[3] -> CYCLE[0] ...

so a chat answer is `<think>` reasoning `</think>` answer and stops, and a completion of a
prompt ending in an ordinary token is the cycle, exactly `max_tokens` long.

The one attention path: head 0 of layer 0 attends (sharply, position-independently: q and k
live on the lowest RoPE frequency) to the `<tools>` token that the chat template writes only
when the request carries `tools`, and copies a flag onto every later position. With the flag,
`</think>` is followed by `<tool_call>` TOOL_JSON `</tool_call>` `<|im_end|>` instead of
ANSWER: reasoning, then the call, as Qwen3 does (vLLM's deepseek_r1 parser takes output
with no `</think>` for reasoning, so a bare tool call would never reach the tool parser).

Embeddings: every token also gets small seeded noise on axes nothing reads, so pooled
embeddings differ between texts (and agree between engines that pool the same way).
"""

from __future__ import annotations

import argparse
import json
import random
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

BUILD_VERSION = "1"  # bump when anything below changes the model; the cache is keyed by it

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
THINK, END_THINK = "<think>", "</think>"
TOOL_CALL, END_TOOL_CALL = "<tool_call>", "</tool_call>"
TOOLS, END_TOOLS = "<tools>", "</tools>"
TOOL_RESPONSE, END_TOOL_RESPONSE = "<tool_response>", "</tool_response>"
# Shaped as the chat template renders an assistant turn, so template-driven parsers
# (llama.cpp derives its parser from the template) see exactly what they expect.
REASONING = "\nLet me think.\n"
ANSWER = "\n\nThe answer is 42."
TOOL_JSON = '\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
CYCLE = (" alpha", " beta", " gamma", " delta")
SPECIAL = (ENDOFTEXT, IM_START, IM_END)
ADDED = (THINK, END_THINK, TOOL_CALL, END_TOOL_CALL, TOOLS, END_TOOLS, TOOL_RESPONSE,
         END_TOOL_RESPONSE, REASONING, ANSWER, TOOL_JSON, *CYCLE)
NEWLINE = "\n"
DEFAULT = "<default>"  # the state of every token that is not in a chain

SUCCESSOR: dict[str, str] = {
    NEWLINE: THINK,
    THINK: REASONING,
    REASONING: END_THINK,
    END_THINK: ANSWER,
    ANSWER: IM_END,
    TOOL_CALL: TOOL_JSON,
    TOOL_JSON: END_TOOL_CALL,
    END_TOOL_CALL: IM_END,
    IM_END: CYCLE[0],
    DEFAULT: CYCLE[0],
    **{c: CYCLE[(i + 1) % len(CYCLE)] for i, c in enumerate(CYCLE)},
}

# A long trained context: llama.cpp caps each slot at it, and the tests need streams that
# outlast a disconnect (llama.cpp makes ~6000 tokens/s of this model). vLLM is given
# --max-model-len explicitly.
HIDDEN, HEADS, HEAD_DIM, LAYERS, INTERMEDIATE, CONTEXT = 128, 2, 64, 2, 256, 32768
BPE_VOCAB = 1024
# Residual-stream axes: chain states first, then the fixed ones; noise lives above NOISE_FROM.
AXIS_BIAS, AXIS_TOOLS_KEY, AXIS_FLAG, NOISE_FROM = 24, 25, 26, 32
ROPE_DIM = HEAD_DIM // 2 - 1  # rotate_half pairs (31, 63): the lowest frequency, ~no rotation
LOGIT_SCALE = 40.0
# Size of the tools flag in the residual stream: small next to the token's own axes (~1),
# or it would dominate the final RMSNorm and shrink every margin.
FLAG_SIZE = 0.5
NOISE = 0.1

CHAT_TEMPLATE = r"""{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
{{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == "user" or (message.role == "system" and not loop.first) %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- elif message.role == "assistant" %}
{%- set content = message.content if message.content is string else '' %}
{%- set reasoning_content = '' %}
{%- if message.reasoning_content is string %}
{%- set reasoning_content = message.reasoning_content %}
{%- elif '</think>' in content %}
{%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
{%- set content = content.split('</think>')[-1].lstrip('\n') %}
{%- endif %}
{%- if reasoning_content %}
{{- '<|im_start|>assistant\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
{%- else %}
{{- '<|im_start|>assistant\n' + content }}
{%- endif %}
{%- if message.tool_calls %}
{%- for tool_call in message.tool_calls %}
{%- if (loop.first and content) or (not loop.first) %}{{- '\n' }}{%- endif %}
{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '<tool_call>\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}
{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
{{- '}\n</tool_call>' }}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- elif message.role == "tool" %}
{%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' }}{{- message.content }}{{- '\n</tool_response>' }}
{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}
{%- endif %}"""

WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one have this "
    "from or had by hot word but what some we can out other were all there when up use your "
    "how said an each she which do their time if will way about many then them write would "
    "like so these her long make thing see him two has look more day could go come did number "
    "sound no most people my over know water than call first who may down side been now find "
    "any new work part take get place made live where after back little only round man year "
    "came show every good me give our under name very through just form sentence great think "
    "say help low line differ turn cause much mean before move right boy old too same tell "
    "does set three want air well also play small end put home read hand port large spell add "
    "even land here must big high such follow act why ask men change went light kind off need "
    "house picture try us again animal point mother world near build self earth father head "
    "stand own page should country found answer school grow study still learn plant cover food "
    "sun four between state keep eye never last let thought city tree cross farm hard start "
    "might story saw far sea draw left late run while press close night real life few north "
    "weather Paris London hello model token stream gateway engine request reply test count"
).split()


@dataclass(frozen=True)
class Paths:
    out: Path

    @property
    def hf(self) -> Path:
        return self.out / "hf"

    @property
    def gguf(self) -> Path:
        return self.out / "tiny.gguf"

    @property
    def expect(self) -> Path:
        return self.out / "expect.json"


def corpus(seed: int = 1234, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
        words[0] = words[0].capitalize()
        sep = rng.choice([". ", "? ", "! ", ", ", ".\n", "\n\n", ": "])
        digits = str(rng.randint(0, 9999)) if rng.random() < 0.2 else ""
        out.append(" ".join(words) + sep + digits)
    out.append('{"name": "x", "arguments": {"k": "v"}} [1, 2] (a) <b> \t$%&*+-/=@\\^_`|~#;\'')
    return out


def build_tokenizer(dest: Path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=CONTEXT,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dest)
    return fast


def token_id(tok: PreTrainedTokenizerFast, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise SystemExit(f"{text!r} is not one token: {ids}")
    return ids[0]


def build_model(tok: PreTrainedTokenizerFast, dest: Path) -> Qwen3ForCausalLM:
    vocab = len(tok)
    cfg = Qwen3Config(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=CONTEXT,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=token_id(tok, ENDOFTEXT),
        eos_token_id=token_id(tok, IM_END),
        pad_token_id=token_id(tok, ENDOFTEXT),
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).eval()
    states = list(SUCCESSOR)  # one residual axis per chain state
    axis = {s: i for i, s in enumerate(states)}
    assert len(states) <= AXIS_BIAS
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        emb = torch.zeros(vocab, HIDDEN)
        emb[:, NOISE_FROM:] = NOISE * torch.randn(vocab, HIDDEN - NOISE_FROM, generator=gen)
        emb[:, AXIS_BIAS] = 1.0
        emb[:, axis[DEFAULT]] = 1.0
        for s in states:
            if s != DEFAULT:
                tid = token_id(tok, s)
                emb[tid, axis[DEFAULT]] = 0.0
                emb[tid, axis[s]] = 1.0
        tools = token_id(tok, TOOLS)
        emb[tools, NOISE_FROM:] = 0.0  # a fixed norm makes the flag's size exact
        emb[tools, AXIS_TOOLS_KEY] = 1.0
        model.model.embed_tokens.weight.copy_(emb)

        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        attn = model.model.layers[0].self_attn
        for w in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight):
            w.zero_()
        attn.q_proj.weight[ROPE_DIM, AXIS_BIAS] = 1.0  # every position asks ...
        attn.k_proj.weight[ROPE_DIM, AXIS_TOOLS_KEY] = 1.0  # ... only <tools> answers
        attn.v_proj.weight[0, AXIS_TOOLS_KEY] = 1.0
        # The value of <tools> after input RMSNorm; o_proj scales it to FLAG_SIZE.
        tools_row = emb[token_id(tok, TOOLS)]
        value = float(tools_row[AXIS_TOOLS_KEY] / tools_row.pow(2).mean().sqrt())
        attn.o_proj.weight[AXIS_FLAG, 0] = FLAG_SIZE / value
        # q/k are RMS-normalised per head: a one-axis vector becomes sqrt(64) = 8 there, so
        # the score of <tools> is 8*2 * 8*2 / sqrt(64) = 32 and of everything else 0.
        attn.q_norm.weight.fill_(2.0)
        attn.k_norm.weight.fill_(2.0)

        head = torch.zeros(vocab, HIDDEN)
        for s, nxt in SUCCESSOR.items():
            head[token_id(tok, nxt), axis[s]] = LOGIT_SCALE
        tool_call = token_id(tok, TOOL_CALL)
        # Flag on: </think> prefers <tool_call> (0.5 + 0.75 > 1); every other state keeps
        # its own successor (1 > 0.75).
        head[tool_call, axis[END_THINK]] = 0.5 * LOGIT_SCALE
        head[tool_call, AXIS_FLAG] = 0.75 * LOGIT_SCALE / FLAG_SIZE
        model.lm_head.weight.copy_(head)
    model.generation_config.do_sample = False
    model.generation_config.temperature = None
    model.generation_config.top_p = None
    model.generation_config.top_k = None
    model.save_pretrained(dest, safe_serialization=True)
    return model


def chat_prompt(tok: PreTrainedTokenizerFast, tools: bool) -> list[int]:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    tool_list = [WEATHER_TOOL] if tools else None
    text = tok.apply_chat_template(messages, tools=tool_list, add_generation_prompt=True, tokenize=False)
    return tok.encode(text, add_special_tokens=False)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def greedy(model: Qwen3ForCausalLM, ids: list[int], steps: int) -> tuple[list[int], float]:
    """Greedy continuation and the smallest top-1 minus top-2 logit margin on the way."""
    seq = list(ids)
    margin = float("inf")
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([seq])).logits[0, -1]
            top = torch.topk(logits, 2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            seq.append(int(top.indices[0]))
    return seq[len(ids):], margin


def check(model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast) -> dict[str, object]:
    """Prove the chains on the HF model itself; the engines are checked by the tests."""
    ids = lambda texts: [token_id(tok, t) for t in texts]  # noqa: E731
    cases = {
        "chat": (chat_prompt(tok, tools=False), [THINK, REASONING, END_THINK, ANSWER, IM_END]),
        "tools": (
            chat_prompt(tok, tools=True),
            [THINK, REASONING, END_THINK, TOOL_CALL, TOOL_JSON, END_TOOL_CALL, IM_END],
        ),
        "completion": (tok.encode("Hello there, tell me a story"), [*CYCLE, *CYCLE[:2]]),
    }
    worst = float("inf")
    for name, (prompt, want) in cases.items():
        got, margin = greedy(model, prompt, len(want))
        if got != ids(want):
            raise SystemExit(f"{name}: got {tok.convert_ids_to_tokens(got)}, want {want}")
        worst = min(worst, margin)
    if worst < 20:
        raise SystemExit(f"logit margin {worst:.1f} is too small to be deterministic")
    return {"min_logit_margin": round(worst, 2)}


def convert_gguf(llama_src: Path, hf: Path, out: Path) -> None:
    """llama.cpp's own converter; our byte-level BPE is GPT-2's pre-tokenizer, which the
    converter cannot know from its table of hashes of published tokenizers."""
    sys.path.insert(0, str(llama_src))
    import conversion.base as base  # type: ignore[import-not-found]

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(hf), "--outfile", str(out), "--outtype", "f32"]
    try:
        runpy.run_path(str(llama_src / "convert_hf_to_gguf.py"), run_name="__main__")
    finally:
        sys.argv = argv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--llama-src", type=Path, default=None)
    args = ap.parse_args()
    paths = Paths(args.out)
    paths.hf.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(paths.hf)
    tok = AutoTokenizer.from_pretrained(paths.hf)  # check it as the engines will load it
    model = build_model(tok, paths.hf)
    stats = check(model, tok)
    if args.llama_src:
        convert_gguf(args.llama_src, paths.hf, paths.gguf)
    expect = {
        "build_version": BUILD_VERSION,
        "reasoning": REASONING,
        "answer": ANSWER,
        "tool_json": TOOL_JSON,
        "tool_name": "get_weather",
        "tool_arguments": {"city": "Paris"},
        "cycle": list(CYCLE),
        "chat_tokens": 5,  # <think> REASONING </think> ANSWER <|im_end|>
        "tool_tokens": 7,  # <think> REASONING </think> <tool_call> TOOL_JSON </tool_call> <|im_end|>
        "context": CONTEXT,
        "hidden": HIDDEN,
        "weather_tool": WEATHER_TOOL,
        **stats,
    }
    paths.expect.write_text(json.dumps(expect, indent=2) + "\n")
    print(json.dumps({"hf": str(paths.hf), "gguf": str(paths.gguf), **stats}))


if __name__ == "__main__":
    main()
