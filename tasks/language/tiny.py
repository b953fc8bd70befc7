"""A small Llama trained here on real English text: the language task's offline quality check.

No pretrained LLM installs from the package index, so the zoo trains one on
CPU: a 4-layer Llama (hidden 256, 4 heads with 2 KV heads, MLP 768, vocab 4096,
tied embeddings; ~4.2M parameters) on Shakespeare's works
(:mod:`tasks.language.corpus`) with a byte-level BPE tokenizer trained on the
same training split. The result is a plain Hugging Face directory
(``config.json``, ``model.safetensors``, ``tokenizer.json``) that ships as
``weights/llama_tiny_shakespeare`` and is the base of the registered
``sdllm-tiny-shakespeare``; its model card holds the measured perplexities of
full precision, W4 + spike-driven and W4 + spike-driven + clipping.

    python -m tasks.language.corpus shakespeare --out data/shakespeare
    python -m tasks.language.tiny train --data data/shakespeare --out weights/llama_tiny_shakespeare --minutes 15
    zoo eval sdllm-tiny-shakespeare --data data/shakespeare/shakespeare.test.raw --context 512

Training: AdamW (lr 3e-3, betas 0.9/0.95, weight decay 0.1, gradient clipping
1.0), 100 warm-up steps then cosine decay to 10 %, batches of 16 random
windows of 512 tokens, fp32 (weights saved in fp16), for ``--steps`` steps or until ``--minutes``
have passed (the cosine schedule is laid out for ``--steps``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from zoo.errors import ZooError

CONFIG = dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
              rms_norm_eps=1e-5)
SPECIAL = "<|endoftext|>"
CALIBRATION_FILE = "calibration.txt"  # shipped beside the weights: the default SDLLM calibration text


def train_tokenizer(text_path: Path, vocab_size: int):
    """Byte-level BPE (the GPT-2 / Llama-3 family's scheme) trained on ``text_path``, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(text_path)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, unk_token=None,
                                   pad_token=SPECIAL, model_max_length=CONFIG["max_position_embeddings"])


def _lr(step: int, steps: int, lr: float, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(data: Path, out: Path, steps: int = 2000, minutes: float | None = None, batch: int = 16, seq_len: int = 512,
          lr: float = 3e-3, seed: int = 0, threads: int | None = None, log_every: int = 50) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    train_path, valid_path = data / "shakespeare.train.raw", data / "shakespeare.valid.raw"
    for p in (train_path, valid_path):
        if not p.is_file():
            raise ZooError(f"{p} does not exist; write the corpus first: python -m tasks.language.corpus shakespeare --out {data}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    tok = train_tokenizer(train_path, CONFIG["vocab_size"])
    ids = torch.tensor(tok(train_path.read_text(encoding="utf-8"))["input_ids"], dtype=torch.long)
    valid = torch.tensor(tok(valid_path.read_text(encoding="utf-8"))["input_ids"], dtype=torch.long)
    cfg = LlamaConfig(**CONFIG, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    log = []
    deadline = None if minutes is None else time.perf_counter() + 60 * minutes
    step = 0
    model.train()
    for step in range(steps):
        if deadline is not None and time.perf_counter() > deadline:
            break
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        starts = torch.randint(0, ids.numel() - seq_len - 1, (batch,), generator=g)
        x = torch.stack([ids[s: s + seq_len + 1] for s in starts.tolist()])
        loss = model(input_ids=x[:, :-1], labels=x[:, :-1]).loss  # transformers shifts the labels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0:
            log.append({"step": step, "loss": round(float(loss.detach()), 4), "s": round(time.perf_counter() - t0, 1)})
            print(json.dumps(log[-1]), flush=True)
    model.eval()
    from .evaluate import perplexity

    model.to(torch.float16).to(torch.float32)  # the shipped weights are fp16: measure what ships

    val = perplexity(model, valid, context=seq_len)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # the default SDLLM calibration text: the first 200 kB of the training split (real text, not the test plays)
    (out / CALIBRATION_FILE).write_text(train_path.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    summary = {"steps": step + 1, "tokens_seen": (step + 1) * batch * seq_len, "train_tokens": ids.numel(),
               "minutes": round((time.perf_counter() - t0) / 60, 2), "valid_ppl": round(val.ppl, 3),
               "params": sum(p.numel() for p in model.parameters()), "batch": batch, "seq_len": seq_len, "lr": lr,
               "seed": seed}
    (out / "training.json").write_text(json.dumps({**summary, "log": log}, indent=1))
    return summary


_STATIC = {"gamma": "static", "steps": 1, "rotate": False}
_TOKEN = {"gamma": "per_token", "steps": 1, "rotate": False}
_MULTI = {"gamma": "per_token", "steps": "auto", "rotate": False}
_ROT = {"gamma": "per_token", "steps": "auto", "rotate": True}
VARIANTS = {  # label -> SDLLMConfig fields (None: the full-precision base)
    "full precision": None,
    "W4 + spikes, static gamma, T=1 (D=7)": _STATIC,
    "W4 + spikes, static gamma + rotation": {**_STATIC, "rotate": True},
    "W4 + spikes, per-token gamma, T=1": _TOKEN,
    "W4 + spikes, per-token gamma, multi-step T": _MULTI,
    "W4 + spikes, per-token gamma, multi-step T + rotation": _ROT,
    "W4 + spikes, per-token gamma + rotation + clipping (K=7)": {**_ROT, "clip": 7},
    "W4 + spikes, per-token gamma + rotation + clipping (K=3)": {**_ROT, "clip": 3},
    "W4 + spikes, static gamma, T=1 + spiking attention": {**_STATIC, "spiking_attention": True},
}


def measure(data: Path, base: Path | None = None, context: int = 512, limit: int | None = None,
            variants: list[str] | None = None) -> list[dict]:
    """Perplexity of the full-precision base, SDLLM (W4 + ternary spikes) and SDLLM with clipping on
    ``data`` (a raw text file), with firing rate and events per token; the spike-driven mode is checked
    against the integer mode on the first window."""
    import zoo
    import neurons
    from transformers import AutoTokenizer

    from .models import BASES, TINY
    from .evaluate import activity, perplexity
    from .build import load_base, resolve_base

    path = resolve_base(TINY, base, BASES[TINY])
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(Path(data).read_text(encoding="utf-8"), return_tensors="pt")["input_ids"][0]
    probe = ids[None, :context]
    rows = []
    chosen = list(VARIANTS) if not variants else variants
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise ZooError(f"unknown variant {unknown[0]!r}; variants: {'; '.join(VARIANTS)}")
    for label in chosen:
        options = VARIANTS[label]
        model = load_base(path)[0] if options is None else zoo.load(TINY, base=str(path), **options)
        res = perplexity(model, ids, context=context, max_windows=limit)
        row = {"variant": label, "ppl": res.ppl, "tokens": res.tokens, "activity": activity(model, probe).to_dict()}
        if options is not None:
            with torch.no_grad():
                integer = model(input_ids=probe).logits
                spike = neurons.to_spike_driven(model)(input_ids=probe).logits
                neurons.to_integer(model)
            row["spike_vs_integer_max_rel"] = float((spike - integer).abs().max() / integer.abs().max())
        rows.append(row)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m tasks.language.tiny", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the tiny Llama on the Shakespeare corpus")
    t.add_argument("--data", required=True, help="folder written by python -m tasks.language.corpus shakespeare")
    t.add_argument("--out", required=True, help="output Hugging Face directory")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--minutes", type=float, default=None, help="stop early after this many minutes")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--seq-len", type=int, default=512)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    m = sub.add_parser("measure", help="perplexity of full precision vs SDLLM vs SDLLM + clipping on a text file")
    m.add_argument("--data", required=True, help="raw text file (e.g. shakespeare.test.raw)")
    m.add_argument("--base", default=None, help="model directory (default: the shipped one)")
    m.add_argument("--context", type=int, default=512)
    m.add_argument("--limit", type=int, default=None, help="only the first N windows")
    m.add_argument("--variant", action="append", default=None, help="measure only this variant (repeatable): "
                   + "; ".join(VARIANTS))
    args = p.parse_args(argv)
    if args.cmd == "measure":
        rows = measure(Path(args.data), args.base, args.context, args.limit, args.variant)
        for r in rows:
            a = r["activity"]
            fr = "-" if a["firing_rate"] is None else f"{a['firing_rate']:.4f}"
            extra = f", spike vs integer {r['spike_vs_integer_max_rel']:.1e}" if "spike_vs_integer_max_rel" in r else ""
            print(f"{r['variant']}: ppl {r['ppl']:.3f} ({r['tokens']} tokens); firing rate {fr}, "
                  f"{a['events_per_token']:.4g} events/token, {a['energy_per_token_mj']:.4g} mJ/token{extra}")
        print(json.dumps(rows))
        return
    try:
        summary = train(Path(args.data), Path(args.out), args.steps, args.minutes, args.batch, args.seq_len, args.lr,
                        args.seed, args.threads)
    except ZooError as e:
        raise SystemExit(f"error: {e}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
