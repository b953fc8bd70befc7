"""The zoo's small real-text Llama: its training script, and the shipped model converted by SDLLM."""

from __future__ import annotations

import json

import pytest
import torch

import neurons
import zoo
from tasks.language import TINY
from tasks.language.sdllm import SDLinear

from .conftest import TEXT


def _corpus(path):
    path.mkdir()
    (path / "shakespeare.train.raw").write_text(TEXT * 3)
    (path / "shakespeare.valid.raw").write_text(TEXT[:600])
    return path


def test_training_script_writes_a_loadable_model(tmp_path, zoo_home):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.language.tiny import CALIBRATION_FILE, train

    out = tmp_path / "model"
    summary = train(_corpus(tmp_path / "data"), out, steps=3, batch=2, seq_len=32, log_every=1)
    assert summary["steps"] == 3 and summary["params"] == 4_196_608 and summary["valid_ppl"] > 1
    log = json.loads((out / "training.json").read_text())["log"]
    assert [r["step"] for r in log] == [0, 1, 2]
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.float16}  # ships in fp16
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    assert model(**tok("Lines of verse.", return_tensors="pt")).logits.isfinite().all()
    assert tok.decode(tok("Lines of verse.")["input_ids"]) == "Lines of verse."
    assert (out / CALIBRATION_FILE).read_text() == (TEXT * 3)[:200_000]
    # and it is a base the registered SDLLM model takes
    sd = zoo.load(TINY, base=str(out), calib_samples=2)
    assert sum(isinstance(m, SDLinear) for m in sd.modules()) == 4 * 7


def test_missing_corpus_says_how_to_make_it(tmp_path):
    from tasks.language.tiny import train
    from zoo.errors import ZooError

    with pytest.raises(ZooError, match="python -m tasks.language.corpus shakespeare"):
        train(tmp_path, tmp_path / "out", steps=1)
