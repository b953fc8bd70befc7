"""The ``zoo`` command line.

    zoo list [--task TASK]            zoo info NAME            zoo download NAME
    zoo profile NAME [options]        zoo VERB MODEL [options]  zoo bench [TASK] [options]

``list``, ``info`` and ``download`` belong to the zoo. Every other verb belongs to the tasks (see
:mod:`zoo.plugin`): the zoo finds the model's (or, for ``bench``, the named) task first and then parses the
rest of the line with that task's own parser, so ``--help`` shows only what applies and an option of another
task is a one-line error. ``zoo --help`` and ``zoo list`` import no torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import plugin, registry
from .errors import ZooError
from .table import fmt_count, text


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (a :class:`ZooError`), not usage plus a message. With
    ``strict``, it names an option it does not know before anything else (a task's verb: an option of another
    task is the first thing to say), and takes no abbreviations (``--im`` is no ``--imgsz``)."""

    def __init__(self, *args, strict: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=not strict, **kwargs)
        self.strict = strict

    def error(self, message):
        raise ZooError(f"{self.prog}: {message} (see `{self.prog} --help`)")

    def parse_args(self, args=None, namespace=None):
        for token in (sys.argv[1:] if args is None else args) if self.strict else ():
            if token == "--":
                break
            flag = token.split("=", 1)[0]
            if flag.startswith("-") and flag not in self._option_string_actions and not _is_number(flag):
                self.error(f"unrecognized option {flag}")
        return super().parse_args(args, namespace)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _parser(prog: str, help: str) -> Parser:
    p = Parser(prog=prog, description=help, strict=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


# --------------------------------------------------------------------------- the zoo's own verbs


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
        print(f"{k:>11}: {v if v not in (None, '', (), {}) else '-'}")
    if card.metrics:
        print("\nmetrics:")
        rows = [{"dataset": m.dataset, "metric": m.metric, "value": f"{m.value:g}", "source": m.source,
                 "command": m.command or "-"} for m in card.metrics]
        print(text(rows, ["dataset", "metric", "value", "source", "command"]))


def cmd_download(args) -> None:
    from . import hub

    card = registry.info(args.name)
    if card.weights is None:
        raise ZooError(f"{args.name} has no released weights to download")
    path = hub.fetch(card.weights, progress=not args.quiet)
    print(json.dumps({"name": args.name, "path": str(path)}) if args.json else f"{args.name}: {path}")


def _profile_parser(name: str, profiling: plugin.Profiling | None) -> Parser:
    sp = _parser(f"zoo profile {name}", "firing rates, operations and energy of one forward pass")
    sp.add_argument("--input-size", type=int, nargs="+", metavar="N", help="input shape (default: the card's)")
    sp.add_argument("--mode", choices=("integer", "spike"), default="integer")
    sp.add_argument("--preset", choices=("fp32", "fp16", "int8"), default="fp32", help="energy per operation (45 nm)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--pretrained", action="store_true", help="load the released weights (downloads them)")
    g.add_argument("--weights", metavar="PATH", help="load weights from a local file")
    if profiling and profiling.add_arguments:
        profiling.add_arguments(sp)
    return sp


def _weights_used(card, args) -> tuple[dict, str]:
    """``zoo.load`` keywords and a label for the weights ``zoo profile`` runs with."""
    if card.builds_weights:
        return {"pretrained": False}, "converted from its base"
    if args.weights:
        return {"weights": args.weights}, args.weights
    if args.pretrained:
        return {"pretrained": True}, "released"
    if card.weights:
        from . import hub

        if hub.local_path(hub.entry(card.weights)).exists():
            return {"pretrained": True}, "released (cached)"
    return {"pretrained": False}, "random"


def cmd_profile(name: str, argv: list[str]) -> None:
    card = registry.info(name)
    task = plugin.task(card.task)
    profiling = task.profiling()
    args = _profile_parser(name, profiling).parse_args(argv)
    if profiling is None:
        raise ZooError(f"`zoo profile` is not available for {card.task} models yet")

    import torch

    from .api import load
    from .profiling import profile

    size = tuple(args.input_size) if args.input_size else tuple(card.input_size)
    if not size:
        raise ZooError(f"{name} has no default input size; pass --input-size")
    options = profiling.load_options(args) if profiling.load_options else {}
    how, weights = _weights_used(card, args)
    model = load(name, mode=args.mode, **how, **options)
    inputs, kwargs = profiling.example_input(model, card, size, torch.Generator().manual_seed(0))
    try:
        result = profile(model, *inputs, preset=args.preset, **kwargs)
    except (RuntimeError, ValueError, IndexError) as e:  # a shape torch rejected deep inside the model
        raise ZooError(f"{name} cannot run on input {list(size)} ({str(e).splitlines()[0]}); "
                       f"it takes {card.input or card.input_size}") from None
    if args.json:
        print(json.dumps({"name": name, "input_size": list(size), "mode": args.mode, "weights": weights,
                          **result.to_dict()}, indent=2))
        return
    rows = [{"layer": l.name, "kind": l.kind, "params": fmt_count(l.params), "MACs": fmt_count(l.macs),
             "ACs": fmt_count(l.acs),
             "rate": "-" if (r := l.firing_rate if l.firing_rate is not None else l.input_rate) is None else f"{r:.3f}",
             "energy (uJ)": f"{l.energy_pj * 1e-6:.3f}"} for l in result.layers]
    print(text(rows, ["layer", "kind", "params", "MACs", "ACs", "rate", "energy (uJ)"]))
    if profiling.note:
        print(f"note: {profiling.note}")
    fr = result.firing_rate
    used = ("random weights (not the trained model's firing rates: pass --pretrained or --weights PATH)"
            if weights == "random" else f"weights: {weights}")
    print(f"\n{name}: input {list(size)}, {args.mode} mode, {used}, {fmt_count(result.params)} params, {fmt_count(result.macs)} MACs, {fmt_count(result.acs)} ACs, "
          f"firing rate {'-' if fr is None else f'{fr:.3f}'}, energy {result.energy_mj:.4f} mJ "
          f"({args.preset}: E_MAC {result.e_mac_pj} pJ, E_AC {result.e_ac_pj} pJ)")
    for m in card.metrics:  # the paper's figure beside the measured one
        if m.metric == "energy (mJ)":
            print(f"paper: {m.value:g} mJ per image ({m.dataset}{', ' + m.note if m.note else ''})"
                  + ("; random weights fire differently" if weights == "random" else ""))


# --------------------------------------------------------------------------- task verbs


def _task_verbs() -> dict[str, dict[str, plugin.Verb]]:
    """verb -> task -> Verb, over every task (imports the tasks' light CLI modules)."""
    verbs: dict[str, dict[str, plugin.Verb]] = {}
    for name, task in plugin.tasks().items():
        for verb, v in task.verbs().items():
            verbs.setdefault(verb, {})[name] = v
        bench = task.bench()
        if bench is not None:
            verbs.setdefault("bench", {})[name] = bench
    return verbs


_VERB_HELP = {
    "predict": "run a model on inputs and write its predictions",
    "eval": "evaluate a model on a data set",
    "train": "train a model",
    "bench": "run a task's benchmark suite (speed as ratios)",
    "export": "write a model to a file another runtime reads (ONNX)",
}


def _verb_usage(verb: str, by_task: dict[str, plugin.Verb]) -> str:
    target = "TASK" if verb == "bench" else "MODEL"
    lines = [f"usage: zoo {verb} {target} [options]", "", _VERB_HELP.get(verb, verb) + ", for:"]
    lines += [f"  {task:<14}{v.help}" for task, v in sorted(by_task.items())]
    if verb == "bench":
        lines += ["", "zoo bench [--json | --markdown [--write README.md]] [--size quick|tiny]: every task's demo "
                  "model, one table"]
    lines += ["", f"`zoo {verb} {target} --help` shows the options of that {'task' if verb == 'bench' else 'model'}'s task"
              + ("" if verb == "bench" else "; `zoo list` names the models")]
    return "\n".join(lines)


def run_bench_all(argv: list[str]) -> None:
    """``zoo bench [options]``: every task's quick summary in one table (:mod:`zoo.bench`)."""
    from . import bench

    parser = _parser("zoo bench", "every task's demo model at a quick size, one table across the zoo "
                                  "(`zoo bench TASK` runs one task's full suite)")
    bench.add_arguments(parser)
    bench.main(parser.parse_args(argv))


def run_verb(verb: str, argv: list[str], by_task: dict[str, plugin.Verb]) -> None:
    if verb == "bench" and (not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        return run_bench_all(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_verb_usage(verb, by_task))
        if not argv:
            raise ZooError(f"zoo {verb}: name a {'task' if verb == 'bench' else 'model'} (see `zoo {verb} --help`)")
        return
    target, rest = argv[0], argv[1:]
    takes_task = next(iter(by_task.values())).takes == "task"
    if takes_task:
        task = plugin.task(target).name
    else:
        if target in plugin.tasks():
            raise ZooError(f"zoo {verb} takes a model name, not a task; `zoo list --task {target}` names its models")
        task = registry.info(target).task
    if task not in by_task:
        raise ZooError(f"`zoo {verb}` is not available for {task} {'' if takes_task else 'models '}yet "
                       f"(available for: {', '.join(sorted(by_task))})")
    v = by_task[task]
    parser = _parser(f"zoo {verb} {target}", v.help)
    v.add_arguments(parser)
    args = parser.parse_args(rest)
    args.target, args.verb = target, verb
    v.run(args)


# --------------------------------------------------------------------------- entry point


def build_parser(verbs: dict[str, dict[str, plugin.Verb]] | None = None) -> Parser:
    """The top-level parser: the zoo's verbs, and the task verbs listed (their options belong to each task)."""
    verbs = _task_verbs() if verbs is None else verbs
    p = Parser(prog="zoo", description="Spiking neural network model zoo",
               epilog="`zoo VERB --help` lists the tasks a verb serves; `zoo VERB NAME --help` its options for NAME.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def add(name, help):
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    sp = add("list", "list the registered models")
    sp.add_argument("--task", choices=tuple(plugin.tasks()))
    sp.set_defaults(fn=cmd_list)
    sp = add("info", "show a model card")
    sp.add_argument("name")
    sp.set_defaults(fn=cmd_info)
    sp = add("download", "download and verify a model's released weights")
    sp.add_argument("name")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(fn=cmd_download)
    sub.add_parser("profile", help="firing rates, operations and energy of one forward pass (zoo profile NAME --help)")
    for verb, by_task in sorted(verbs.items()):
        sub.add_parser(verb, help=f"{_VERB_HELP.get(verb, verb)} ({', '.join(sorted(by_task))})")
    return p


def _main(argv: list[str]) -> None:
    if argv and argv[0] == "profile":
        if len(argv) < 2 or argv[1] in ("-h", "--help"):
            print("usage: zoo profile NAME [options]\n\nfiring rates, operations and energy of one forward pass; "
                  "`zoo profile NAME --help` shows the options for NAME")
            if len(argv) < 2:
                raise ZooError("zoo profile: name a model (see `zoo list`)")
            return
        return cmd_profile(argv[1], argv[2:])
    verbs = _task_verbs()
    if argv and argv[0] in verbs:
        return run_verb(argv[0], argv[1:], verbs[argv[0]])
    args = build_parser(verbs).parse_args(argv)
    args.fn(args)


def _user_error(e: BaseException) -> bool:
    """A zoo error, or a neurons error (only possible once ``neurons`` was imported: it imports torch)."""
    neuron_error = getattr(sys.modules.get("neurons.errors"), "NeuronError", None)
    return isinstance(e, ZooError) or (neuron_error is not None and isinstance(e, neuron_error))


def main(argv: list[str] | None = None) -> int:
    try:
        _main(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `zoo list | head`: the reader has gone
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        if not _user_error(e):
            raise
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
