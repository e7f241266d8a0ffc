"""`vllm bench serve` against several targets from one process (vLLM imports once).

Run with the vLLM environment's Python:

    python bench_serve.py --out result.json --target gateway=http://127.0.0.1:8000=KEY \
        --target direct=http://127.0.0.1:20001 -- <vllm bench serve arguments>

Each target is NAME=BASE_URL[=API_KEY]; the arguments after `--` are passed to every run,
except that `--model-of NAME=MODEL` sends that target another model name (`--model`).
Writes {NAME: vLLM's result dict} to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> None:
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--target", action="append", required=True)
    ap.add_argument("--model-of", action="append", default=[], metavar="NAME=MODEL")
    args = ap.parse_args(own)
    model_of = dict(item.split("=", 1) for item in args.model_of)

    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    results = {}
    for target in args.target:
        name, url, *key = target.split("=", 2)
        os.environ.pop("OPENAI_API_KEY", None)
        if key:
            os.environ["OPENAI_API_KEY"] = key[0]  # read by vLLM's request functions
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        model = ["--model", model_of[name]] if name in model_of else []  # the last --model wins
        results[name] = bench_main(parser.parse_args([*rest, *model, "--base-url", url]))
    args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
