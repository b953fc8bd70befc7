"""``zoo eval`` for language models.

    zoo eval sdllm-llama2-7b --data wiki.test.raw --base /models/Llama-2-7b-hf [--context 2048 --stride 2048]
    zoo eval sdllm-llama2-7b --data piqa_validation.jsonl --base /models/Llama-2-7b-hf [--lm-task piqa --limit 500]

A ``.jsonl`` file is a zero-shot multiple-choice set (PIQA, ARC-e, ARC-c,
HellaSwag, WinoGrande, told apart by their fields, or ``--lm-task``); any
other file is a raw text corpus scored by perplexity. Prints the metric, the
firing rate, events and energy per token of the SDLLM model, and the same for
the full-precision base (``--no-base`` skips it). Options shared with other
tasks' ``zoo eval`` are added only once (the parser is shared).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo.cli import task_command
from zoo.errors import ZooError

TASK = "language"


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    if any(f in parser._option_string_actions for f in flags):
        return
    parser.add_argument(*flags, **kwargs)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--data", default=None, metavar="PATH", help="data set file (language: raw text for perplexity, or a zero-shot .jsonl)")
    _add(parser, "--base", default=None, metavar="PATH", help="local Hugging Face directory of the base model (language)")
    _add(parser, "--context", type=int, default=None, metavar="N", help="perplexity window in tokens (language, default 2048 or the model's max length)")
    _add(parser, "--stride", type=int, default=None, metavar="N", help="perplexity window stride (language, default: the context)")
    _add(parser, "--join", choices=("hf", "raw"), default=None,
         help="perplexity text (language): hf = WikiText rows joined as the HF data set (default), raw = the file as is")
    _add(parser, "--lm-task", default=None, choices=("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande"),
         help="zero-shot task of the jsonl (language, default: from its fields)")
    _add(parser, "--limit", type=int, default=None, metavar="N", help="only the first N questions / windows (language)")
    _add(parser, "--D", type=int, default=None, help="SDLLM count bound D (language, default 7)")
    _add(parser, "--clip", type=int, default=None, help="SDLLM membrane-potential clipping bound < D (language)")
    _add(parser, "--calib-file", default=None, metavar="PATH", help="text file for SDLLM calibration (language)")
    _add(parser, "--no-base", action="store_true", help="skip the full-precision base model (language)")
    _add(parser, "--mode", choices=("integer", "spike"), default=None, help="integer counts (default) or spike-driven")


def evaluate_model(model, tokenizer, data: Path, args) -> dict:
    from .evaluate import activity, load_choices, perplexity, zero_shot

    limit = getattr(args, "limit", None)
    if data.suffix == ".jsonl":
        res = zero_shot(model, tokenizer, data, task=getattr(args, "lm_task", None), limit=limit)
        out = {"task": res.task, "acc": res.acc, "acc_norm": res.acc_norm, "questions": res.questions}
        q = load_choices(data, getattr(args, "lm_task", None), limit=1)[1][0]
        probe = tokenizer((q.contexts or [q.context])[0] + q.choices[0], return_tensors="pt")["input_ids"]
    else:
        # the standard 2048, or the model's own length where it is shorter
        context = getattr(args, "context", None) or min(2048, getattr(model.config, "max_position_embeddings", 2048))
        res = perplexity(model, data, tokenizer, context=context, stride=getattr(args, "stride", None), max_windows=limit,
                         join=getattr(args, "join", None) or "hf")
        out = {"task": "perplexity", **res.to_dict()}
        probe = tokenizer(data.read_text(encoding="utf-8")[:20000], return_tensors="pt")["input_ids"][:, :min(context, 512)]
    # activity and energy on the first question / the first window (at most 512 tokens), as detection's first image
    out["activity"] = activity(model, probe).to_dict()
    return out


def _line(label: str, r: dict) -> str:
    a = r["activity"]
    metric = (f"ppl {r['ppl']:.3f} ({r['tokens']} tokens, {r['windows']} windows)" if r["task"] == "perplexity"
              else f"{r['task']} acc {r['acc'] * 100:.2f} acc_norm {r['acc_norm'] * 100:.2f} ({r['questions']} questions)")
    fr = a["firing_rate"]
    return (f"{label}: {metric}; firing rate {'-' if fr is None else f'{fr:.4f}'}, "
            f"{a['events_per_token']:.4g} events/token, {a['acs_per_token']:.4g} ACs + {a['macs_per_token']:.4g} MACs per token, "
            f"{a['energy_per_token_mj']:.4g} mJ/token")


@task_command("eval", TASK, add_eval_arguments)
def run_eval(args) -> None:
    import torch

    import zoo

    from . import BASES
    from .models import load_base, resolve_base

    if not args.data:
        raise ZooError("pass --data FILE (raw text for perplexity, or a PIQA/ARC/HellaSwag/WinoGrande .jsonl)")
    data = Path(args.data)
    if not data.is_file():
        raise ZooError(f"--data {data} is not a file")
    base = resolve_base(args.target, args.base, BASES.get(args.target))
    opts = {k: v for k, v in (("D", getattr(args, "D", None)), ("clip", getattr(args, "clip", None)),
                              ("calib_file", getattr(args, "calib_file", None))) if v is not None}
    model = zoo.load(args.target, pretrained=False, base=str(base), mode=args.mode or "integer", **opts)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base)
    except Exception as e:
        raise ZooError(f"cannot read the tokenizer in {base} ({type(e).__name__}); the base directory needs its tokenizer files") from None
    results = {"name": args.target, "data": str(data), "mode": args.mode or "integer",
               "sdllm": evaluate_model(model, tokenizer, data, args)}
    del model
    if not getattr(args, "no_base", False):
        fp, _ = load_base(base, torch.float32)
        results["base"] = evaluate_model(fp, tokenizer, data, args)
    if getattr(args, "json", False):
        print(json.dumps(results, indent=2))
        return
    print(_line(f"{args.target} ({results['mode']})", results["sdllm"]))
    if "base" in results:
        print(_line("full-precision base", results["base"]))
