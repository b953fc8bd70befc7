"""Language-model evaluation: perplexity, zero-shot multiple choice, activity and energy per token.

* :func:`perplexity`: a raw text file (WikiText-2 raw: ``wiki.test.raw``)
  tokenised once, scored with a sliding window of ``context`` tokens (2048,
  the LLM-quantisation convention) advanced by ``stride`` tokens (default
  ``context``: non-overlapping windows, as GPTQ / SpikeLLM; a smaller stride
  gives every scored token more context, as in Hugging Face's perplexity
  guide). Each token after the first is scored exactly once; ``ppl =
  exp(sum NLL / tokens scored)``. ``join="hf"`` rebuilds the text
  as ``"\\n\\n".join(rows)`` of the Hugging Face ``wikitext`` data set, whose
  rows are the file's lines (blank lines as ``""``), so numbers match papers
  that load the data set; ``join="raw"`` scores the file as is; ``join="auto"``
  (default) tells the two apart from the text (:func:`corpus_layout`: WikiText's
  heading lines and ``@-@`` tokens) or stops with a line that names ``--join``.
* :func:`zero_shot`: multiple choice by log-likelihood of each continuation
  given the context, lm-eval-harness prompts, for PIQA, ARC-Easy,
  ARC-Challenge, HellaSwag and WinoGrande jsonl files with their public field
  names. Reports ``acc`` (sum of log-likelihoods) and ``acc_norm``
  (log-likelihood per byte of the continuation).
* :func:`activity`: firing rate, events and ACs per token, energy per token
  (``zoo.profile``: E_AC 0.9 pJ per event accumulate, E_MAC 4.6 pJ per MAC).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

import neurons
from zoo.errors import ZooError

__all__ = ["perplexity", "zero_shot", "load_choices", "activity", "read_corpus", "TASKS", "Question",
           "PerplexityResult", "ZeroShotResult", "loglikelihood", "corpus_layout"]

TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")


def _logits(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}
    try:
        out = model(input_ids=ids, use_cache=False, **kwargs)
    except TypeError:
        out = model(ids)
    logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
    return logits.float()


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------------- perplexity

@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # tokens scored
    windows: int
    context: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)


_WIKI_HEADING = re.compile(r"^ (=+) [^=\n].*? \1 ?$", re.M)  # " = Title = ", " = = Section = = "
_WIKI_TOKEN = re.compile(r" @[-,.]@ ")  # WikiText's split hyphens and number separators: "1 @,@ 000", "well @-@ known"


def corpus_layout(text: str, name: str = "the corpus") -> str:
    """``"hf"`` for WikiText's raw layout, ``"raw"`` for any other text; a one-line :class:`ZooError` naming
    ``--join`` where the signs disagree.

    WikiText (Merity et al. 2016, the ``wiki.*.raw`` files) has heading lines `` = Title = `` /
    `` = = Section = = `` and lines that begin with a space; its tokeniser leaves `` @-@ ``, `` @,@ ``, `` @.@ ``.
    Headings with either of the other two signs: WikiText. Neither headings nor ``@-@`` tokens: raw text.
    Headings alone (or ``@-@`` tokens alone) could be either, so the caller must say."""
    heading = _WIKI_HEADING.search(text) is not None
    token = _WIKI_TOKEN.search(text) is not None
    lines = [line for line in text.splitlines() if line.strip()]
    indented = bool(lines) and sum(line.startswith(" ") for line in lines) > 0.9 * len(lines)
    if heading and (token or indented):
        return "hf"
    if not heading and not token:
        return "raw"
    sign = "' = Heading = ' lines" if heading else "' @-@ ' tokens"
    raise ZooError(f"cannot tell whether {name} is WikiText (it has {sign} but not WikiText's other signs); "
                   "pass --join hf (WikiText rows joined as the Hugging Face data set) or --join raw (the file as is)")


def read_corpus(path: str | Path, join: str = "auto") -> str:
    """The text of a raw corpus file (see the module docstring for ``join``; ``"auto"``: :func:`corpus_layout`)."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"text file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if join == "auto":
        join = corpus_layout(text, str(path))
    if join == "raw":
        return text
    if join != "hf":
        raise ZooError(f"join must be 'auto', 'hf' or 'raw', got {join!r}")
    rows = [line if line.strip() else "" for line in text.splitlines(keepends=True)]
    return "\n\n".join(rows)


@torch.no_grad()
def perplexity(model, data, tokenizer=None, context: int = 2048, stride: int | None = None, join: str = "auto",
               max_windows: int | None = None) -> PerplexityResult:
    """Sliding-window perplexity of ``data``: a text file path, a string (with ``tokenizer``) or token ids [N]."""
    stride = context if stride is None else stride
    if context < 2 or not 1 <= stride <= context:
        raise ZooError(f"need context >= 2 and 1 <= stride <= context, got context={context}, stride={stride}")
    if isinstance(data, torch.Tensor):
        ids = data.reshape(-1).long()
    else:
        if tokenizer is None:
            raise ZooError("perplexity on text needs the model's tokenizer")
        text = read_corpus(data, join) if isinstance(data, Path) or (isinstance(data, str) and Path(data).is_file()) else str(data)
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    if ids.numel() < 2:
        raise ZooError("the corpus has fewer than 2 tokens; nothing to score")
    device = _device(model)
    nll_sum, scored, windows, prev_end = 0.0, 0, 0, 0
    for begin in range(0, ids.numel(), stride):
        end = min(begin + context, ids.numel())
        window = ids[begin:end].unsqueeze(0).to(device)
        logits = _logits(model, window)[0, :-1]
        targets = window[0, 1:]
        new = end - max(prev_end, begin + 1)  # tokens not scored before (the window's first has no context)
        if new > 0:
            lp = F.log_softmax(logits[-new:], -1).gather(-1, targets[-new:, None]).squeeze(-1)
            nll_sum -= float(lp.double().sum())
            scored += new
        windows += 1
        prev_end = end
        if end == ids.numel() or (max_windows is not None and windows >= max_windows):
            break
    nll = nll_sum / scored
    return PerplexityResult(ppl=math.exp(nll), nll=nll, tokens=scored, windows=windows, context=context, stride=stride)


# ----------------------------------------------------------------------------------------------- zero-shot

@dataclass
class Question:
    context: str
    choices: list[str]  # continuations
    label: int
    contexts: list[str] | None = None  # per-choice contexts (WinoGrande's partial scoring)


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _arc_choices(rec: dict) -> tuple[str, list[str], list[str]]:
    q = rec["question"]
    if isinstance(q, dict):  # original ARC jsonl: {"question": {"stem", "choices": [{"text", "label"}]}}
        stem, choices = q["stem"], q["choices"]
        return stem, [c["text"] for c in choices], [c["label"] for c in choices]
    ch = rec["choices"]  # Hugging Face ai2_arc: {"question", "choices": {"text": [...], "label": [...]}}
    return q, list(ch["text"]), list(ch["label"])


def _to_question(task: str, rec: dict) -> Question:
    try:
        if task == "piqa":
            return Question(f"Question: {rec['goal']}\nAnswer:", [" " + rec["sol1"], " " + rec["sol2"]], int(rec["label"]))
        if task in ("arc_easy", "arc_challenge"):
            stem, texts, labels = _arc_choices(rec)
            key = str(rec["answerKey"])
            if key not in labels:  # some ARC items use 1-4 where labels are A-D
                key = {"1": "A", "2": "B", "3": "C", "4": "D", "5": "E"}.get(key, key)
            return Question(f"Question: {stem}\nAnswer:", [" " + t for t in texts], labels.index(key))
        if task == "hellaswag":
            ctx = rec.get("ctx_a", rec.get("ctx", "")) + (" " + rec["ctx_b"].capitalize() if rec.get("ctx_b") else "")
            context = _hellaswag_clean(rec.get("activity_label", "") + ": " + ctx) if rec.get("activity_label") else _hellaswag_clean(ctx)
            return Question(context, [" " + _hellaswag_clean(e) for e in rec["endings"]], int(rec["label"]))
        if task == "winogrande":
            s = rec["sentence"]
            i = s.index("_")
            cont = " " + s[i + 1:].strip()
            opts = [rec["option1"], rec["option2"]]
            return Question("", [cont, cont], int(rec["answer"]) - 1, contexts=[s[:i] + o for o in opts])
    except (KeyError, ValueError, TypeError) as e:
        raise ZooError(f"{task} record does not have the public fields ({type(e).__name__}: {e}); record: {str(rec)[:120]}") from None
    raise ZooError(f"unknown zero-shot task {task!r}; tasks: {', '.join(TASKS)}")


def detect_task(path: Path, rec: dict) -> str:
    if "goal" in rec and "sol1" in rec:
        return "piqa"
    if "sentence" in rec and "option1" in rec:
        return "winogrande"
    if "endings" in rec:
        return "hellaswag"
    if "answerKey" in rec:
        name = path.name.lower()
        return "arc_challenge" if "challenge" in name or "arc-c" in name or "arc_c" in name else "arc_easy"
    raise ZooError(f"cannot tell which task {path} is from its fields {sorted(rec)[:8]}; pass task= (one of {', '.join(TASKS)})")


def load_choices(path: str | Path, task: str | None = None, limit: int | None = None) -> tuple[str, list[Question]]:
    """``(task, questions)`` from a jsonl file (one record per line, the public field names)."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"data file {path} does not exist")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ZooError(f"{path}:{n} is not a JSON line") from None
    if not records:
        raise ZooError(f"{path} has no records")
    if task is not None and task not in TASKS:
        raise ZooError(f"unknown zero-shot task {task!r}; tasks: {', '.join(TASKS)}")
    task = task or detect_task(path, records[0])
    records = records[:limit] if limit else records
    return task, [_to_question(task, r) for r in records]


@torch.no_grad()
def loglikelihood(model, tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
    """Log-likelihood of each continuation given its context, and whether it is the greedy one (lm-eval semantics).

    The continuation's tokens are those of ``tok(context + continuation)`` after
    the tokens of ``tok(context)``, so word boundaries tokenise as in running text.
    All pairs are scored in one right-padded batch.
    """
    if not pairs:
        return []
    seqs, spans = [], []
    for ctx, cont in pairs:
        if ctx and ctx[-1] == " ":  # move trailing spaces into the continuation, as lm-eval
            cont, ctx = " " + cont, ctx[:-1]
        whole = tokenizer(ctx + cont)["input_ids"]
        head = tokenizer(ctx)["input_ids"] if ctx else (tokenizer("")["input_ids"])
        n_cont = len(whole) - len(head)
        if n_cont <= 0 or whole[: len(head)] != head:
            n_cont = len(tokenizer(cont, add_special_tokens=False)["input_ids"])
            whole = head + tokenizer(cont, add_special_tokens=False)["input_ids"]
        if len(whole) - n_cont < 1:  # no context token at all: nothing predicts the first token
            whole = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else (tokenizer.eos_token_id or 0)] + whole
        seqs.append(whole)
        spans.append(n_cont)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    device = _device(model)
    logp = F.log_softmax(_logits(model, ids.to(device), mask.to(device)), -1)
    out = []
    for i, (s, n) in enumerate(zip(seqs, spans)):
        L = len(s)
        tgt = torch.tensor(s[L - n:], device=device)
        lp = logp[i, L - n - 1: L - 1]
        ll = float(lp.gather(-1, tgt[:, None]).double().sum())
        greedy = bool((lp.argmax(-1) == tgt).all())
        out.append((ll, greedy))
    return out


@dataclass
class ZeroShotResult:
    task: str
    acc: float
    acc_norm: float
    questions: int
    predictions: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("predictions")
        return d


def zero_shot(model, tokenizer, data, task: str | None = None, limit: int | None = None) -> ZeroShotResult:
    """Zero-shot accuracy on a jsonl file (or a list of :class:`Question`) by log-likelihood."""
    if isinstance(data, (str, Path)):
        task, questions = load_choices(data, task, limit)
    else:
        questions = list(data)[:limit] if limit else list(data)
        task = task or "custom"
    if not questions:
        raise ZooError("no questions to evaluate")
    right = right_norm = 0
    preds = []
    for q in questions:
        ctxs = q.contexts or [q.context] * len(q.choices)
        lls = [ll for ll, _ in loglikelihood(model, tokenizer, list(zip(ctxs, q.choices)))]
        norm = [ll / max(1, len(c.encode("utf-8"))) for ll, c in zip(lls, q.choices)]
        pred = max(range(len(lls)), key=lambda i: lls[i])
        preds.append(pred)
        right += pred == q.label
        right_norm += max(range(len(norm)), key=lambda i: norm[i]) == q.label
    n = len(questions)
    return ZeroShotResult(task=task, acc=right / n, acc_norm=right_norm / n, questions=n, predictions=preds)


# ----------------------------------------------------------------------------------------------- activity / energy

@dataclass
class Activity:
    tokens: int
    firing_rate: float | None  # mean |count| per neuron per token, all spiking layers (per event slot: / D)
    events_per_token: float  # ternary events (sum |C|) entering spiking layers, per token
    acs_per_token: float  # event accumulates per token
    macs_per_token: float  # full-precision multiply-accumulates per token (lm_head, unconverted layers)
    energy_per_token_mj: float  # E_AC * ACs + E_MAC * MACs, per token
    e_ac_pj: float
    e_mac_pj: float

    def to_dict(self) -> dict:
        return asdict(self)


def activity(model, ids: torch.Tensor, preset: str = "fp32") -> Activity:
    """Profile one forward on ``ids`` [B, L] (linear layers only; the attention products are not counted)."""
    from zoo.profiling import profile

    ids = ids if ids.ndim == 2 else ids.unsqueeze(0)
    ids = ids.to(_device(model))
    prof = profile(model, input_ids=ids, preset=preset)
    modules = dict(model.named_modules())
    events = 0.0
    for layer in prof.layers:
        m = modules.get(layer.name)
        if isinstance(m, neurons.SpikeLinear) and layer.acs:
            events += layer.acs / m.out_features
    n = ids.numel()
    return Activity(tokens=n, firing_rate=prof.firing_rate, events_per_token=events / n, acs_per_token=prof.acs / n,
                    macs_per_token=prof.macs / n, energy_per_token_mj=prof.energy_mj / n,
                    e_ac_pj=prof.e_ac_pj, e_mac_pj=prof.e_mac_pj)
