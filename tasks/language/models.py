"""The language model cards: SDLLM conversions of Hugging Face bases, and the zoo's tiny Shakespeare Llama.

Builders import the converter (torch, transformers) when called, so that listing the cards imports neither.
"""

from __future__ import annotations

from zoo.registry import register

_PAPER = "SDLLM (2026): spike-driven large language models by gamma-SQP conversion (no public code)"
_ZERO_SHOT = "5 zero-shot tasks (avg)"  # PIQA, ARC-e, ARC-c, HellaSwag, WinoGrande
_INPUT = "token ids [B, L] (LongTensor) from the base model's tokenizer; returns the base model's output (logits [B, L, vocab])"
_NEURON = "Ternary (gamma-SQP; -1/0/+1 events)"
_NOTES = (
    "Converted at load time from a local Hugging Face directory of the base model (zoo.load(name, pretrained=False, "
    "base=PATH)); every q/k/v/o/gate/up/down linear becomes Ternary(gamma, D) + SpikeLinear with 4-bit group-128 "
    "symmetric weights; embeddings, norms and lm_head stay full precision. The converted weights are cached "
    "(safetensors, int4 codes + scales, sha256-checked) in the zoo cache. params: the base model's."
)


def _builder(name: str, hf_repo: str):
    def build(base=None, **options):
        from .build import build_sdllm

        return build_sdllm(name, hf_repo, base=base, **options)

    build.__name__ = f"build_{name.replace('-', '_').replace('.', '_')}"
    return build


# Peak memory of converting layer by layer (tasks.language.layerwise.peak_estimate of the base's config.json,
# defaults: 128 x 2048 calibration tokens, batches of 4, rotation): GiB in float32 and in float16.
_PEAKS = {"sdllm-llama2-7b": ("8.3", "4.8"), "sdllm-llama2-13b": ("11.1", "6.8"),
          "sdllm-llama3-8b": ("11.9", "9.8"), "sdllm-qwen2.5-14b": ("17.4", "14.5")}


def _layerwise_note(name: str, params: int) -> str:
    fp32, fp16 = _PEAKS[name]
    return (f" Bases larger than memory convert layer by layer (layerwise=True; automatic when the base's weights in "
            f"dtype exceed 40 % of the available memory; same converted model, tested): peak memory {fp32} GiB in "
            f"float32, {fp16} GiB with dtype='float16' (computed by tasks.language.layerwise.peak_estimate from the "
            f"config, not measured; the whole-model path holds the {params * 4 / 2**30:.1f} GiB of fp32 weights "
            "and about as much again for the converted copies).")


def _card(name: str, hf_repo: str, params: int, metrics=()):
    return dict(task="language", paper=_PAPER, code="", license="base model's license (" + hf_repo + ")",
                input=_INPUT, input_size=(1, 128), T=1, D=7, neuron=_NEURON, weights=None, builds_weights=True,
                metrics=list(metrics), notes=f"Base: {hf_repo}. " + _NOTES + _layerwise_note(name, params),
                params=params)


_LLAMA2_7B_METRICS = [
    dict(dataset=_ZERO_SHOT, metric="acc (%)", value=61.09, source="paper", note="SDLLM, W4 + 1.58-bit spikes; average of PIQA, ARC-e, ARC-c, HellaSwag, WinoGrande"),
    dict(dataset=_ZERO_SHOT, metric="energy (J)", value=0.67, source="paper", note="SDLLM, paper's E_AC/E_MAC convention"),
    dict(dataset=_ZERO_SHOT, metric="FP16 acc (%)", value=63.72, source="paper", note="the FP16 LLaMA-2-7B base"),
    dict(dataset=_ZERO_SHOT, metric="FP16 energy (J)", value=31.77, source="paper", note="the FP16 LLaMA-2-7B base"),
]

BASES = {}  # model name -> Hugging Face repo of its base model
for _name, _repo, _params, _metrics in (
    ("sdllm-llama2-7b", "meta-llama/Llama-2-7b-hf", 6_738_415_616, _LLAMA2_7B_METRICS),
    ("sdllm-llama2-13b", "meta-llama/Llama-2-13b-hf", 13_015_864_320, []),
    ("sdllm-llama3-8b", "meta-llama/Meta-Llama-3-8B", 8_030_261_248, []),
    ("sdllm-qwen2.5-14b", "Qwen/Qwen2.5-14B", 14_770_033_664, []),
):
    BASES[_name] = _repo
    register(_name, **_card(_name, _repo, _params, _metrics))(_builder(_name, _repo))

# The zoo's own small Llama, trained here on real English text (tasks.language.tiny): the offline quality check.
TINY = "sdllm-tiny-shakespeare"
TINY_BASE = "llama-tiny-shakespeare"  # manifest entry of the bundled base (weights/llama_tiny_shakespeare/)
TINY_CONTEXT = 512
_TINY_DATA = "Shakespeare test plays (Hamlet, Tempest)"
_TINY_MEASURE = ("python -m tasks.language.corpus shakespeare --out data/shakespeare && python -m tasks.language.tiny "
                 "measure --data data/shakespeare/shakespeare.test.raw --limit 16")
_SUBSET = "first 16 windows of 512 (8,176 tokens) of the test plays"


def _tiny(metric, value, note=""):
    return dict(dataset=_TINY_DATA, metric=metric, value=value, source="reproduced", command=_TINY_MEASURE,
                note=(_SUBSET + ("; " + note if note else "")))


_TINY_METRICS = [  # measured with _TINY_MEASURE; spike-driven logits equal integer mode bit for bit in every variant
    _tiny("ppl, full-precision base", 62.39),
    _tiny("ppl (W4 + spike-driven, D=7)", 62.49, "the default: per-token gamma, multi-step T, Hadamard rotation; "
          "firing rate 2.174 (mean |count|), 20,030 events/token"),
    _tiny("ppl (W4 + spike-driven, static gamma, T=1)", 66.18, "the earlier default (gamma='static', steps=1, "
          "rotate=False); firing rate 1.334, 12,296 events/token"),
    _tiny("ppl (W4 + spike-driven, static gamma + rotation)", 63.02, "firing rate 2.010, 18,530 events/token"),
    _tiny("ppl (W4 + spike-driven, per-token gamma, T=1)", 66.23, "firing rate 1.304, 12,020 events/token"),
    _tiny("ppl (W4 + spike-driven, per-token gamma, multi-step T)", 64.55, "firing rate 1.314, 12,110 events/token"),
    _tiny("ppl (W4 + spike-driven + clipping K=7)", 63.00, "default + clip=7; firing rate 2.161, 19,920 events/token"),
    _tiny("ppl (W4 + spike-driven + clipping K=3)", 80.55, "default + clip=3; firing rate 1.788, 16,480 events/token"),
    dict(dataset=_TINY_DATA, metric="ppl (W4 + spike-driven, static gamma, T=1, + spiking attention)", value=74.85,
         source="reproduced", command=_TINY_MEASURE.replace(" --limit 16", ""),
         note="all 95,133 test tokens (full-precision base 67.46 there); Q K^T and P V on counts too "
              "(SDLLMConfig(spiking_attention=True))"),
    _tiny("energy (mJ/token, fp32 45 nm), full-precision base", 0.01929, "linear layers only, first 512 test tokens"),
    _tiny("energy (mJ/token, fp32 45 nm)", 0.01104, "the default conversion, linear layers only, first 512 test "
          "tokens; lm_head stays MACs"),
]


def build_tiny(base=None, calib_file=None, calib_seq_len: int = TINY_CONTEXT, **options):
    from .build import build_sdllm, resolve_base

    path = resolve_base(TINY, base, BASES[TINY])
    calib_file = calib_file if calib_file is not None else path / "calibration.txt"
    return build_sdllm(TINY, BASES[TINY], base=path, calib_file=calib_file, calib_seq_len=calib_seq_len, **options)


BASES[TINY] = "zoo:" + TINY_BASE
register(TINY, task="language", paper=_PAPER, code="", license="Apache-2.0 (trained by the zoo; text: public domain)",
         input=_INPUT, input_size=(1, TINY_CONTEXT), T=1, D=7, neuron=_NEURON, weights=None, builds_weights=True,
         metrics=_TINY_METRICS, params=4_196_608,
         notes=("The zoo's offline real-text check of SDLLM: a 4.2M-parameter Llama (4 layers, hidden 256, GQA 4/2 "
                "heads, vocab 4096 byte-level BPE) trained on CPU on Shakespeare's works from the package index "
                "(python -m tasks.language.tiny train; see weights/llama_tiny_shakespeare/training.json), shipped in "
                "weights/llama_tiny_shakespeare (fp16) and converted at load time: W4 group-128 + gamma-SQP ternary "
                "spikes (D=7; per-token gamma, multi-step T, Hadamard rotation folded into the weights) on every "
                "q/k/v/o/gate/up/down linear, calibrated on calibration.txt (the first 200 kB "
                "of the training split, 128 windows of 512 tokens); embeddings, norms and lm_head (untied by the "
                "rotation) stay full precision. Perplexity at context 512, the model's training length."))(build_tiny)
