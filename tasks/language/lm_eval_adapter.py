"""An lm-evaluation-harness model for SDLLM (or any Hugging Face causal LM): ``SDLLMEvalLM``.

Importable only when ``lm_eval`` is installed (it is not a dependency of the zoo)::

    import lm_eval, zoo
    from tasks.language.lm_eval_adapter import SDLLMEvalLM
    model = zoo.load("sdllm-llama2-7b", pretrained=False, base="/models/Llama-2-7b-hf")
    lm = SDLLMEvalLM(model, tokenizer)              # tokenizer: AutoTokenizer.from_pretrained(base)
    lm_eval.simple_evaluate(model=lm, tasks=["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande"])
"""

from __future__ import annotations

try:
    from lm_eval.api.model import LM
except ImportError as e:  # pragma: no cover - exercised only without lm_eval
    raise ImportError("tasks.language.lm_eval_adapter needs lm-eval-harness: pip install lm-eval") from e

import torch

from .evaluate import _device, loglikelihood, perplexity

__all__ = ["SDLLMEvalLM"]


class SDLLMEvalLM(LM):
    """lm-eval ``LM`` over a (converted) Hugging Face causal LM; scores in the model's current mode."""

    def __init__(self, model, tokenizer, max_length: int = 2048, batch_size: int = 8):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args[:2]) for r in requests]
        out = []
        for i in range(0, len(pairs), self.batch_size):
            out.extend(loglikelihood(self.model, self.tokenizer, pairs[i:i + self.batch_size]))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for r in requests:
            text = r.args[0]
            prefix = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
            ids = torch.tensor([prefix] + self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if ids.numel() < 2:
                out.append(0.0)
                continue
            # stride = context - 1: each window starts at the last token of the previous, so every token is scored once
            res = perplexity(self.model, ids, context=self.max_length, stride=self.max_length - 1)
            out.append(-res.nll * res.tokens)
        return out

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        out = []
        for r in requests:
            context, kwargs = r.args[0], dict(r.args[1] if len(r.args) > 1 else {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            ids = self.tokenizer(context, return_tensors="pt")["input_ids"].to(_device(self.model))
            gen = self.model.generate(ids, max_new_tokens=int(kwargs.get("max_gen_toks", 256)), do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
            text = self.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop, 1)[0]
            out.append(text)
        return out
