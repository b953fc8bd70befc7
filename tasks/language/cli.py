"""``zoo eval`` for language models.

    zoo eval sdllm-llama2-7b --data wiki.test.raw --base /models/Llama-2-7b-hf [--context 2048 --stride 2048]
    zoo eval sdllm-llama2-7b --data piqa_validation.jsonl --base /models/Llama-2-7b-hf [--lm-task piqa --limit 500]
    zoo eval sdllm-tiny-shakespeare --tasks zoo_shakespeare_lines [--include-path DIR --num-fewshot K]

A ``.jsonl`` file is a zero-shot multiple-choice set (PIQA, ARC-e, ARC-c,
HellaSwag, WinoGrande, told apart by their fields, or ``--lm-task``); any
other file is a raw text corpus scored by perplexity (WikiText's layout or
plain text, told apart by :func:`tasks.language.evaluate.corpus_layout`, or
``--join``). ``--tasks`` runs lm-evaluation-harness tasks instead, through
:mod:`tasks.language.harness` (offline; the zoo's own task YAMLs, or
``--include-path``). Prints the metric, the
firing rate, events and energy per token of the SDLLM model, and the same for
the full-precision base (``--no-base`` skips it). The parser is this task's own: an option of another
task is an error. ``zoo export`` is refused with the reason (:data:`EXPORT_REFUSAL`). This module imports no
torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo.errors import ZooError
from zoo.plugin import Profiling, Verb


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, metavar="PATH", help="raw text for perplexity, or a zero-shot .jsonl")
    parser.add_argument("--tasks", default=None, metavar="T1,T2",
                        help="lm-eval task names instead of --data (the zoo ships zoo_shakespeare_lines; needs lm-eval)")
    parser.add_argument("--include-path", action="append", default=None, metavar="DIR",
                        help="a folder of lm-eval task YAMLs for --tasks (repeatable)")
    parser.add_argument("--num-fewshot", type=int, default=None, metavar="K", help="lm-eval few-shot examples (--tasks)")
    add_base_argument(parser)
    parser.add_argument("--context", type=int, default=None, metavar="N", help="perplexity window in tokens (default 2048 or the model's max length)")
    parser.add_argument("--stride", type=int, default=None, metavar="N", help="perplexity window stride (default: the context)")
    parser.add_argument("--join", choices=("auto", "hf", "raw"), default="auto",
                        help="perplexity text: hf = WikiText rows joined as the HF data set, raw = the file as is, "
                             "auto = told from the text (default: WikiText's ' = Heading = ' lines and ' @-@ ' tokens)")
    parser.add_argument("--lm-task", default=None, choices=("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande"),
                        help="zero-shot task of the jsonl (default: from its fields)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N questions / windows / documents")
    parser.add_argument("--D", type=int, default=None, help="SDLLM count bound D (default 7)")
    parser.add_argument("--clip", type=int, default=None, help="SDLLM membrane-potential clipping bound on the counts")
    parser.add_argument("--calib-file", default=None, metavar="PATH", help="text file for SDLLM calibration")
    parser.add_argument("--calib-seq-len", type=int, default=None, metavar="N",
                        help="SDLLM calibration sequence length in tokens (default 2048; the text must hold one)")
    parser.add_argument("--no-base", action="store_true", help="skip the full-precision base model")
    parser.add_argument("--mode", choices=("integer", "spike"), default="integer", help="integer counts (default) or spike-driven")


def add_base_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=None, metavar="PATH",
                        help="local Hugging Face directory of the base model (default: the bundled one, where there is)")


def _harness(model, tokenizer, args) -> dict:
    """``--tasks``: lm-eval's metrics per task (``{task: {metric: value}}``, stderr entries dropped)."""
    from .evaluate import activity
    from .harness import run_tasks

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise ZooError("--tasks needs at least one lm-eval task name")
    max_length = args.context or min(2048, getattr(model.config, "max_position_embeddings", 2048))
    res = run_tasks(model, tokenizer, names, include_path=args.include_path, limit=args.limit,
                    num_fewshot=args.num_fewshot, max_length=max_length)
    metrics = {task: {k.split(",")[0]: v for k, v in r.items() if isinstance(v, (int, float)) and "_stderr" not in k}
               for task, r in res["results"].items()}
    first = next(iter(res["samples"].values()))[0]  # activity on the first request of the first task
    ctx, cont = first["arguments"][0][:2] if isinstance(first["arguments"][0], (list, tuple)) else first["arguments"][:2]
    probe = tokenizer(ctx + cont, return_tensors="pt")["input_ids"][:, -512:]
    return {"task": "lm-eval", "metrics": metrics, "activity": activity(model, probe).to_dict()}


def evaluate_model(model, tokenizer, data: Path | None, args) -> dict:
    from .evaluate import activity, load_choices, perplexity, zero_shot

    if args.tasks:
        return _harness(model, tokenizer, args)
    limit = args.limit
    if data.suffix == ".jsonl":
        res = zero_shot(model, tokenizer, data, task=args.lm_task, limit=limit)
        out = {"task": res.task, "acc": res.acc, "acc_norm": res.acc_norm, "questions": res.questions}
        q = load_choices(data, args.lm_task, limit=1)[1][0]
        probe = tokenizer((q.contexts or [q.context])[0] + q.choices[0], return_tensors="pt")["input_ids"]
    else:
        # the standard 2048, or the model's own length where it is shorter
        context = args.context or min(2048, getattr(model.config, "max_position_embeddings", 2048))
        res = perplexity(model, data, tokenizer, context=context, stride=args.stride, max_windows=limit, join=args.join)
        out = {"task": "perplexity", **res.to_dict()}
        probe = tokenizer(data.read_text(encoding="utf-8")[:20000], return_tensors="pt")["input_ids"][:, :min(context, 512)]
    # activity and energy on the first question / the first window (at most 512 tokens), as detection's first image
    out["activity"] = activity(model, probe).to_dict()
    return out


def _line(label: str, r: dict) -> str:
    a = r["activity"]
    if r["task"] == "lm-eval":
        metric = "; ".join(f"{task} " + " ".join(f"{k} {v * 100:.2f}" if k.startswith("acc") else f"{k} {v:.4g}"
                                                for k, v in m.items() if k != "sample_len")
                           + (f" ({m['sample_len']} documents)" if "sample_len" in m else "")
                           for task, m in r["metrics"].items())
    elif r["task"] == "perplexity":
        metric = f"ppl {r['ppl']:.3f} ({r['tokens']} tokens, {r['windows']} windows)"
    else:
        metric = f"{r['task']} acc {r['acc'] * 100:.2f} acc_norm {r['acc_norm'] * 100:.2f} ({r['questions']} questions)"
    fr = a["firing_rate"]
    return (f"{label}: {metric}; firing rate {'-' if fr is None else f'{fr:.4f}'}, "
            f"{a['events_per_token']:.4g} events/token, {a['acs_per_token']:.4g} ACs + {a['macs_per_token']:.4g} MACs per token, "
            f"{a['energy_per_token_mj']:.4g} mJ/token")


def run_eval(args) -> None:
    import torch

    import zoo

    from .models import BASES
    from .build import load_base, resolve_base

    if (args.data is None) == (args.tasks is None):
        raise ZooError("zoo eval needs --data PATH (perplexity or a zero-shot .jsonl) or --tasks NAMES (lm-eval), one of them")
    data = None if args.data is None else Path(args.data)
    if data is not None and not data.is_file():
        raise ZooError(f"--data {data} is not a file")
    if args.tasks:
        from .harness import _lm_eval

        _lm_eval()  # says how to install lm-eval before the model is converted
    elif data.suffix != ".jsonl" and args.join == "auto":  # the corpus layout, before the model is converted
        from .evaluate import corpus_layout

        args.join = corpus_layout(data.read_text(encoding="utf-8"), str(data))
    base = resolve_base(args.target, args.base, BASES.get(args.target))
    opts = {k: v for k, v in (("D", args.D), ("clip", args.clip), ("calib_file", args.calib_file),
                              ("calib_seq_len", args.calib_seq_len)) if v is not None}
    model = zoo.load(args.target, pretrained=False, base=str(base), mode=args.mode, **opts)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base)
    except Exception as e:
        raise ZooError(f"cannot read the tokenizer in {base} ({type(e).__name__}); the base directory needs its tokenizer files") from None
    results = {"name": args.target, "data": str(data) if data else None, "tasks": args.tasks, "mode": args.mode,
               "sdllm": evaluate_model(model, tokenizer, data, args)}
    del model
    if not args.no_base:
        fp, _ = load_base(base, torch.float32)
        results["base"] = evaluate_model(fp, tokenizer, data, args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(_line(f"{args.target} ({results['mode']})", results["sdllm"]))
    if "base" in results:
        print(_line("full-precision base", results["base"]))


def example_input(model, card, size, generator):
    """``zoo profile``: random token ids of ``size`` (the real firing rates come from ``zoo eval`` on text)."""
    import torch

    vocab = model.get_input_embeddings().num_embeddings
    return (), {"input_ids": torch.randint(0, vocab, size, generator=generator)}


EXPORT_REFUSAL = (
    "zoo export is not available for language models: they generate token by token with a KV cache "
    "(tasks.language.decode), which one fixed-shape ONNX graph does not capture, and the SDLLM models' 7B/8B weights "
    "exceed ONNX's 2 GB single-file limit; export the base model with Hugging Face optimum (optimum-cli export onnx)"
)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The detection task's export options, so that the line reaches the refusal instead of an option error."""
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    parser.add_argument("--mode", choices=("integer", "spike"), default="integer")
    parser.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N")
    parser.add_argument("--out", default=None, metavar="PATH")


def run_export(args) -> None:
    raise ZooError(EXPORT_REFUSAL)


VERBS = {"eval": Verb("perplexity, zero-shot accuracy or lm-eval tasks of the SDLLM model next to its full-precision base, with "
                      "firing rate, events and energy per token", add_eval_arguments, run_eval),
         "export": Verb("not available for language models (says why)", add_export_arguments, run_export)}
PROFILING = Profiling(example_input, add_arguments=add_base_argument,
                      load_options=lambda args: {"base": args.base} if args.base else {},
                      note="random token ids (zoo eval NAME --data TEXT measures firing on real text)")
