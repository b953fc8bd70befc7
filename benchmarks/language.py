"""``zoo bench language``: fused static-cache decode vs transformers' eager ``generate``, and SDLLM conversion time.

On a random Llama of about 134M parameters (hidden 768, 12 layers, 12 heads,
MLP 2048, vocab 32000; ``--size tiny`` for a quick check), batch 1, greedy:

* ``eager``: ``model.generate(do_sample=False)``, transformers' eager decode
  with its dynamic KV cache (the reference);
* ``fused``: :class:`tasks.language.decode.FusedDecoder`, static KV cache,
  per-layer attention step and MLP compiled with ``torch.compile``
  (compilation is done in a warm-up run and reported separately);
* both produce the same tokens (checked);
* ``fp16 weights``: the fused path with half-precision copies of the weights
  (``FusedDecoder(weight_dtype=torch.float16)``), ClusterFusion's precision,
  against the same fp32 eager reference, with its largest logit difference
  from the fp32 fused path (ClusterFusion's tolerance: max-abs 5e-2).

Reported as ratios (tokens/s fused / eager) over the median of ``--repeats``
runs, plus the SDLLM conversion time of the same model (the default
conversion: Hadamard rotation, calibration on ``--calib`` sequences of 128
tokens, int4 weights, layer replacement), the fused decode of the converted
model relative to its eager decode, and issue 11's goals side by side: the
SDLLM W4 fused decode relative to the full-precision base's eager
``generate`` (goal >= 3x), full-precision fused vs eager (>= 1.6x),
conversion < 2 min; with the CPU's flags, each group kernel's time on one
decode row (fp32 batched product, int8 GEMM, packed int4: the fused decode
picks the fastest that fits, :func:`tasks.language.int_kernels.choose`) and
the uncompiled fused decode on each kernel that runs, with its tokens checked.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

from zoo.errors import ZooError
from zoo.plugin import Verb

from . import progress

SIZES = {
    # SmolLM-135M's architecture (HuggingFaceTB/SmolLM-135M: 30 layers, hidden 576, GQA 9/3, tied embeddings)
    "smollm-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "134m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}


def _model(size: str, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**SIZES[size], max_position_embeddings=2048, bos_token_id=0, eos_token_id=None, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def _time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _interleaved(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run in turn (a shared machine's load falls on both alike)."""
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def run(size: str = "134m", new_tokens: int = 32, prompt: int = 16, repeats: int = 3, calib: int = 128) -> dict:
    import torch

    from tasks.language.decode import FusedDecoder
    from tasks.language.evaluate import activity
    from tasks.language.sdllm import SDLLMConfig, convert

    progress(f"building a random Llama {size}")
    model = _model(size)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(1, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0))

    def eager(m):
        return lambda: m.generate(ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)

    def fused_paths(m):
        dec = FusedDecoder(m, max_len=prompt + new_tokens)
        t = time.perf_counter()
        dec.generate(ids, new_tokens)  # compiles
        compile_s = time.perf_counter() - t
        return dec, compile_s

    report: dict = {"size": size, "params": params, "prompt": prompt, "new_tokens": new_tokens, "repeats": repeats}
    with torch.no_grad():
        progress(f"full precision: transformers eager generate, {repeats} runs of {new_tokens} tokens")
        eager(model)()  # warm-up
        t_eager, ref = _time(eager(model), repeats)
        progress("full precision: fused static-cache decode (compiles once), fp32 then fp16 weight copies")
        dec, compile_s = fused_paths(model)
        t_fused, out = _time(lambda: dec.generate(ids, new_tokens), repeats)
        _, ref_logits = dec.generate(ids, new_tokens, return_logits=True)
        half = FusedDecoder(model, max_len=prompt + new_tokens, weight_dtype=torch.float16)
        half.generate(ids, new_tokens)  # compiles
        t_half, (out_half, half_logits) = _time(lambda: half.generate(ids, new_tokens, return_logits=True), repeats)
    report["fp"] = {"eager_tok_s": new_tokens / t_eager, "fused_tok_s": new_tokens / t_fused,
                    "speedup": t_eager / t_fused, "compile_s": compile_s, "same_tokens": _agree(out, ref, prompt),
                    "activity": activity(model, ref).to_dict()}
    report["fp16_weights"] = {"fused_tok_s": new_tokens / t_half, "speedup": t_eager / t_half,
                              "same_tokens": _agree(out_half, ref, prompt),
                              "max_abs_logits": float((half_logits - ref_logits).abs().max())}

    base = copy.deepcopy(model)  # the full-precision base, timed again next to the SDLLM fused decode
    calib_ids = torch.randint(1, model.config.vocab_size, (calib, 128), generator=torch.Generator().manual_seed(1))
    progress(f"SDLLM conversion with {calib} calibration sequences")
    t = time.perf_counter()
    convert(model, calib_ids, SDLLMConfig())
    report["conversion_s"] = time.perf_counter() - t
    report["calib_sequences"] = calib
    with torch.no_grad():
        progress("SDLLM: eager generate, then fused decode")
        eager(model)()
        t_eager, ref = _time(eager(model), repeats)
        dec, compile_s = fused_paths(model)
        t_fused, out = _time(lambda: dec.generate(ids, new_tokens), repeats)
        progress("SDLLM fused decode and the full-precision base's eager generate, run by run in turn")
        t_base, t_sd = _interleaved(eager(base), lambda: dec.generate(ids, new_tokens), repeats)
        del base
        from tasks.language import int4_kernel, int_kernels

        kernels = {"cpu": int_kernels.cpu_features(), "decode_row_s": int_kernels.timing(), "int4": int4_kernel.status(),
                   "chosen": sorted({_kernel_of(p) for L in dec.layers for p in _projections(L)})}
        progress("SDLLM: fused decode (uncompiled) on each group kernel that runs here")
        paths = {}
        for k in ("fp32", "int8", "int4"):
            if k == "int8" and not int_kernels.faster():
                continue  # torch._int_mm without VNNI / AMX: 20-300x slower (its decode-row time is printed)
            try:
                paths[k] = FusedDecoder(model, max_len=prompt + new_tokens, compile=False, kernel=k)
            except ZooError:
                continue
        times = {k: _time(lambda d=d: d.generate(ids, new_tokens), repeats) for k, d in paths.items()}
        kernels["vs_fp32"] = {k: times["fp32"][0] / t for k, (t, _) in times.items()}
        kernels["same_tokens"] = {k: _agree(o, ref, prompt) for k, (_, o) in times.items()}
    report["goals"] = {  # issue 11: W4 fused vs the base's eager generate >= 3x; fp fused vs eager >= 1.6x; < 120 s
        "sdllm_fused_vs_fp_eager": t_base / t_sd,
        "fp_fused_vs_fp_eager": report["fp"]["speedup"], "conversion_s": report["conversion_s"]}
    report["cpu_flags"] = cpu_flags()
    report["threads"] = torch.get_num_threads()
    report["sdllm"] = {"eager_tok_s": new_tokens / t_eager, "fused_tok_s": new_tokens / t_fused,
                       "speedup": t_eager / t_fused, "compile_s": compile_s,
                       "same_tokens": _agree(out, ref, prompt), "activity": activity(model, ref).to_dict(),
                       "kernels": kernels}
    return report


def _agree(out, ref, prompt: int) -> bool | int:
    """True where the greedy tokens equal the reference's; else how many new tokens agree before they part."""
    if out.shape == ref.shape and bool((out == ref).all()):
        return True
    new = (out[0, prompt:] != ref[0, prompt:]).nonzero()
    return int(new[0]) if len(new) else min(out.shape[1], ref.shape[1]) - prompt


def _projections(L) -> list:
    """Every projection a fused-decode layer runs (merged q|k|v and gate|up where they are)."""
    return [*L.projs, L.o, *([L.gate_up] if L.gate_up is not None else [L.gate, L.up]), L.down]


def _kernel_of(proj) -> str:
    """The group kernel of a fused-decode projection (:func:`tasks.language.decode._project`)."""
    w = proj[0]
    if not isinstance(w, tuple):
        return "dense"
    return "int4" if w[3] is not None else "int8" if w[2] is not None else "fp32"


def cpu_flags() -> str:
    """The vector / matrix flags of this CPU from ``/proc/cpuinfo`` (what the ratios depend on)."""
    keep = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
            "amx_tile", "amx_int8", "amx_bf16")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return " ".join(f for f in keep if f in flags) or "unknown"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=tuple(SIZES), default="134m", help="random Llama size (default 134m)")
    parser.add_argument("--new-tokens", type=int, default=32, metavar="N", help="greedy tokens per run (default 32)")
    parser.add_argument("--prompt", type=int, default=16, metavar="N", help="prompt tokens (default 16)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N", help="timed runs per path (default 3)")
    parser.add_argument("--calib", type=int, default=128, metavar="N", help="SDLLM calibration sequences of 128 tokens (default 128)")


def _said(agree) -> str:
    return "yes" if agree is True else f"the first {agree} new tokens, then they part"


def run_bench(args) -> None:
    report = run(args.size, args.new_tokens, args.prompt, args.repeats, args.calib)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"random Llama {report['size']} ({report['params'] / 1e6:.0f}M params), batch 1, prompt {report['prompt']}, "
          f"{report['new_tokens']} greedy tokens, median of {report['repeats']} runs")
    for label in ("fp", "sdllm"):
        r = report[label]
        print(f"{'full precision' if label == 'fp' else 'SDLLM (integer)'}: fused static-cache decode "
              f"{r['speedup']:.2f}x the tokens/s of transformers eager generate "
              f"(compile {r['compile_s']:.1f} s once; same tokens: {_said(r['same_tokens'])})")
    h = report["fp16_weights"]
    print(f"full precision, fp16 weight copies (ClusterFusion's precision): fused decode {h['speedup']:.2f}x the "
          f"tokens/s of transformers eager fp32 generate; logits vs the fp32 path max-abs {h['max_abs_logits']:.2g} "
          f"(ClusterFusion's tolerance 5e-2); same tokens: {_said(h['same_tokens'])}")
    k = report["sdllm"]["kernels"]
    row = ", ".join(f"{n[:-2]} {t * 1e6:.0f} us" for n, t in k["decode_row_s"].items())
    print(f"SDLLM group kernels, one decode row of a 1024x1024 layer: {row} (int4 kernel: "
          f"{k['int4'].get('isa') or k['int4']['why']}); the fused decode chose {', '.join(k['chosen'])}")
    print("SDLLM fused decode (uncompiled) per kernel vs the fp32 batched product: "
          + ", ".join(f"{n} {r:.2f}x (same tokens: {_said(k['same_tokens'][n])})" for n, r in k["vs_fp32"].items()))
    print(f"SDLLM conversion ({report['calib_sequences']} calibration sequences of 128 tokens + int4 weights + "
          f"layer replacement): {report['conversion_s']:.2f} s")
    g = report["goals"]
    print(f"goals (issue 11): SDLLM W4 fused decode {g['sdllm_fused_vs_fp_eager']:.2f}x the tokens/s of the "
          f"full-precision base's eager generate (goal >= 3); full-precision fused {g['fp_fused_vs_fp_eager']:.2f}x eager "
          f"(goal >= 1.6); conversion {g['conversion_s']:.1f} s (goal < 120)")
    print(f"CPU flags: {report['cpu_flags']}; torch threads {report['threads']}")
    for label in ("fp", "sdllm"):
        a = report[label]["activity"]
        fr = a["firing_rate"]
        print(f"{'full precision' if label == 'fp' else 'SDLLM (integer)'} on the generated sequence: firing rate "
              f"{'-' if fr is None else f'{fr:.4f}'}, {a['events_per_token']:.4g} events/token, "
              f"{a['acs_per_token']:.4g} ACs + {a['macs_per_token']:.4g} MACs per token, "
              f"{a['energy_per_token_mj']:.4g} mJ/token ({a['e_mac_pj']} pJ/MAC, {a['e_ac_pj']} pJ/AC)")


VERB = Verb("fused decode vs transformers' generate (full precision and SDLLM), conversion time, activity per token",
            add_arguments, run_bench, takes="task")


def summary(size: str = "quick") -> dict:
    """The language row of ``zoo bench`` (:mod:`zoo.bench`): the demo model ``sdllm-tiny-shakespeare`` (its
    bundled base converted at load time; the first load converts and caches, ~2 min on 2 cores). Its metric is
    the perplexity of the text that ships with it, ``weights/llama_tiny_shakespeare/calibration.txt`` (the
    first 200 kB of its training split: the zoo ships no held-out text, the test plays are downloaded from
    the package index), firing rate and energy per token on the first window, and greedy decode (prompt 16
    tokens) timed side by side: transformers' eager ``generate`` (the reference), the zoo's static-cache
    decode run eagerly (``FusedDecoder(compile=False)``: no compile time in a quick run) on the fp32 batched
    product and on the int8 GEMM (where it is faster here) and the packed-int4 kernel (where they run); exact =
    the same tokens as the reference.
    ``size="tiny"``: a 2-window x 64-token calibration (its own cache entry), one 64-token window, 4 tokens."""
    import torch
    from transformers import AutoTokenizer

    import zoo
    from tasks.language import int_kernels
    from tasks.language.build import resolve_base
    from tasks.language.decode import FusedDecoder
    from tasks.language.evaluate import activity, perplexity
    from tasks.language.models import BASES, TINY

    from . import median_ms, summary_row

    context, windows, new_tokens, repeats, load = {
        "quick": (512, 4, 16, 3, {}),
        "tiny": (64, 1, 4, 1, {"calib_samples": 2, "calib_seq_len": 64})}[size]
    progress(f"language: loading {TINY} (converted once, then cached)")
    model = zoo.load(TINY, **load)
    path = resolve_base(TINY, None, BASES[TINY])
    text = path / "calibration.txt"
    ids = AutoTokenizer.from_pretrained(path)(text.read_text(encoding="utf-8"), return_tensors="pt")["input_ids"][0]
    progress(f"language: perplexity on {windows} window(s) of {context} tokens of {text.name}")
    ppl = perplexity(model, ids, context=context, max_windows=windows)
    act = activity(model, ids[None, :context])
    prompt = ids[None, :16]
    ref_tokens = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    runs = {"reference": lambda: model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                                pad_token_id=0)}
    decoders = {}
    for kernel in ("fp32", "int8", "int4"):  # each group kernel that runs this model here
        if kernel == "int8" and not int_kernels.faster():
            continue  # torch._int_mm without VNNI / AMX: 100-300x slower, not worth a quick run's time
        try:
            dec = FusedDecoder(model, max_len=16 + new_tokens, compile=False, kernel=kernel)
        except ZooError:
            continue
        decoders["static-cache" if kernel == "fp32" else f"static-cache {kernel}"] = dec
    for label, dec in decoders.items():
        runs[label] = lambda dec=dec: dec.generate(prompt, new_tokens)
    progress(f"language: timing {', '.join(runs)} ({new_tokens} greedy tokens, median of {repeats})")
    times, exact = {}, []
    with torch.no_grad():
        for label, fn in runs.items():
            times[label] = median_ms(fn, repeats)
            if torch.equal(fn(), ref_tokens):
                exact.append(label)
    return summary_row(TINY, "language", "perplexity", ppl.ppl,
                       f"{ppl.tokens} tokens of the shipped {text.name} (training text)", act.firing_rate,
                       act.energy_per_token_mj, "token", times, "reference", exact,
                       note=f"speed: greedy decode of {new_tokens} tokens vs transformers generate")
