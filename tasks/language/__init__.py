"""Language models: SDLLM spike-driven conversion of Hugging Face LLMs, evaluators, fused decode.

    import zoo, neurons
    model = zoo.load("sdllm-llama2-7b", pretrained=False, base="/models/Llama-2-7b-hf")  # converted + cached
    neurons.to_spike_driven(model)                                                       # ternary events

or convert any model directly: ``tasks.language.sdllm.convert(hf_model, calibration_ids)``.
"""

from zoo.plugin import Task, lazy_exports

TASK = Task(
    name="language",
    description="spike-driven language models: SDLLM conversion of Hugging Face LLMs, evaluators, fused decode",
    models="tasks.language.models",
    cli="tasks.language.cli",
)

_LAZY = {"convert": "sdllm", "SDLLMConfig": "sdllm", "SDLinear": "sdllm", "BASES": "models", "TINY": "models",
         "TINY_BASE": "models", "TINY_CONTEXT": "models"}
__all__ = ["TASK", *_LAZY]

__getattr__ = lazy_exports(__name__, _LAZY)  # the architectures import torch: only when asked for
