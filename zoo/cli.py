"""The ``zoo`` command line: list, info, download, profile, and the task verbs.

Task packages add verbs (predict, eval, train, bench) with :func:`task_command`;
a verb appears only once some task implements it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from . import hub, registry
from .errors import ZooError
from .table import fmt_count, text

# verb -> task -> (add_arguments, run)
_TASK_COMMANDS: dict[str, dict[str, tuple[Callable, Callable]]] = {}
_VERB_HELP = {
    "predict": "run a model on inputs and write its predictions",
    "eval": "evaluate a model on a data set",
    "train": "train a model",
    "bench": "run a task's benchmark suite",
}


def task_command(verb: str, task: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator: ``run(args)`` implements ``zoo VERB`` for models of ``task``."""

    def deco(run):
        _TASK_COMMANDS.setdefault(verb, {})[task] = (add_arguments, run)
        return run

    return deco


def _card_row(card) -> dict:
    paper = {f"{m.metric}": m.value for m in card.metrics if m.source == "paper"}
    return {
        "name": card.name, "task": card.task, "params": fmt_count(card.params), "T": card.T, "D": card.D,
        "weights": "yes" if card.weights else "-",
        "paper metrics": ", ".join(f"{k} {v:g}" for k, v in paper.items()) or "-",
    }


def cmd_list(args) -> None:
    cards = [registry.info(n) for n in registry.list_models(args.task)]
    if args.json:
        print(json.dumps([c.to_dict() for c in cards], indent=2))
    elif not cards:
        print("no models registered" + (f" for task {args.task}" if args.task else ""))
    else:
        print(text([_card_row(c) for c in cards], ["name", "task", "params", "T", "D", "weights", "paper metrics"]))


def cmd_info(args) -> None:
    card = registry.info(args.name)
    d = card.to_dict()
    if args.json:
        print(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        if k == "metrics":
            continue
        if k == "params":
            v = f"{v:,}"
        print(f"{k:>11}: {v if v not in (None, '', ()) else '-'}")
    if card.metrics:
        print("\nmetrics:")
        rows = [{"dataset": m.dataset, "metric": m.metric, "value": f"{m.value:g}", "source": m.source,
                 "command": m.command or "-"} for m in card.metrics]
        print(text(rows, ["dataset", "metric", "value", "source", "command"]))


def cmd_download(args) -> None:
    card = registry.info(args.name)
    if card.weights is None:
        raise ZooError(f"{args.name} has no released weights to download")
    path = hub.fetch(card.weights, progress=not args.quiet)
    print(json.dumps({"name": args.name, "path": str(path)}) if args.json else f"{args.name}: {path}")


def cmd_profile(args) -> None:
    import torch

    from .api import load
    from .profile import profile

    card = registry.info(args.name)
    size = tuple(args.input_size) if args.input_size else tuple(card.input_size)
    if not size:
        raise ZooError(f"{args.name} has no default input size; pass --input-size")
    options = {"base": args.base} if args.base else {}
    model = load(args.name, pretrained=args.pretrained, weights=args.weights, mode=args.mode, **options)
    g = torch.Generator().manual_seed(0)
    if card.task == "language":  # token ids; the real firing rates come from `zoo eval` on text
        vocab = model.get_input_embeddings().num_embeddings
        inputs, kwargs = (), {"input_ids": torch.randint(0, vocab, size, generator=g)}
    else:
        inputs, kwargs = (torch.rand(size, generator=g),), {}
    try:
        result = profile(model, *inputs, preset=args.preset, **kwargs)
    except (RuntimeError, ValueError, IndexError) as e:  # a shape torch rejected deep inside the model
        raise ZooError(f"{args.name} cannot run on input {list(size)} ({str(e).splitlines()[0]}); "
                       f"it takes {card.input or card.input_size}") from None
    if args.json:
        print(json.dumps({"name": args.name, "input_size": list(size), "mode": args.mode,
                          "weights": "converted from its base" if card.builds_weights else args.weights or ("pretrained" if args.pretrained else "random"), **result.to_dict()}, indent=2))
        return
    rows = [{"layer": l.name, "kind": l.kind, "params": fmt_count(l.params), "MACs": fmt_count(l.macs),
             "ACs": fmt_count(l.acs), "rate": "-" if (r := l.firing_rate if l.firing_rate is not None else l.input_rate) is None else f"{r:.3f}",
             "energy (uJ)": f"{l.energy_pj * 1e-6:.3f}"} for l in result.layers]
    print(text(rows, ["layer", "kind", "params", "MACs", "ACs", "rate", "energy (uJ)"]))
    if card.task == "language":
        print("note: random token ids (zoo eval NAME --data TEXT measures firing on real text)")
    elif not (args.pretrained or args.weights):
        print("note: random weights (pass --pretrained or --weights PATH for the model's real firing rates)")
    fr = result.firing_rate
    print(f"\n{args.name}: input {list(size)}, {args.mode} mode, {fmt_count(result.params)} params, "
          f"{fmt_count(result.macs)} MACs, {fmt_count(result.acs)} ACs, firing rate {'-' if fr is None else f'{fr:.3f}'}, "
          f"energy {result.energy_mj:.4f} mJ ({args.preset}: E_MAC {result.e_mac_pj} pJ, E_AC {result.e_ac_pj} pJ)")


def build_parser() -> argparse.ArgumentParser:
    registry._load_tasks()  # tasks add their verbs on import
    import benchmarks  # noqa: F401  (the suites add `zoo bench`)
    p = argparse.ArgumentParser(prog="zoo", description="Spiking neural network model zoo")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    sp = add("list", cmd_list, "list the registered models")
    sp.add_argument("--task", choices=registry.TASKS)
    sp = add("info", cmd_info, "show a model card")
    sp.add_argument("name")
    sp = add("download", cmd_download, "download and verify a model's released weights")
    sp.add_argument("name")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp = add("profile", cmd_profile, "firing rates, operations and energy of one forward pass")
    sp.add_argument("name")
    sp.add_argument("--input-size", type=int, nargs="+", metavar="N", help="input shape, e.g. 1 3 640 640")
    sp.add_argument("--mode", choices=("integer", "spike"), default="integer")
    sp.add_argument("--preset", choices=("fp32", "fp16", "int8"), default="fp32", help="energy per operation (45 nm)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--pretrained", action="store_true", help="load the released weights (downloads them)")
    g.add_argument("--weights", metavar="PATH", help="load weights from a local file")
    sp.add_argument("--base", metavar="PATH", help="language models: local Hugging Face directory of the base model")

    for verb, tasks in sorted(_TASK_COMMANDS.items()):
        sp = add(verb, _run_task_verb, _VERB_HELP.get(verb, verb) + f" ({', '.join(sorted(tasks))})")
        sp.add_argument("target", help="model name (or task, for bench)")
        sp.set_defaults(verb=verb)
        for add_arguments, _ in tasks.values():
            add_arguments(sp)
    return p


def _run_task_verb(args) -> None:
    tasks = _TASK_COMMANDS[args.verb]
    task = args.target if args.target in registry.TASKS else registry.info(args.target).task
    if task not in tasks:
        raise ZooError(f"`zoo {args.verb}` is not available for {task} models yet (available for: {', '.join(sorted(tasks))})")
    tasks[task][1](args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except ZooError as e:
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    from zoo.cli import main as _main  # the imported module holds the verbs tasks registered

    sys.exit(_main())
