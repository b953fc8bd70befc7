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


def test_shipped_model_converts_and_keeps_quality(zoo_home):
    """The bundled base (sha256-checked) converts with its default calibration; on held-out text the SDLLM
    model stays close to full precision, clipping costs more, and spike-driven == integer bit for bit."""
    from tasks.language import BASES
    from tasks.language.evaluate import perplexity
    from tasks.language.build import load_base, resolve_base

    card = zoo.info(TINY)
    assert card.builds_weights and card.params == 4_196_608
    measured = {m.metric: m.value for m in card.metrics}
    assert measured["ppl, full-precision base"] < measured["ppl (W4 + spike-driven, D=7)"] < measured["ppl (W4 + spike-driven + clipping K=3)"]
    # the recorded default conversion meets the goal: within 3 % of full precision
    assert measured["ppl (W4 + spike-driven, D=7)"] <= 1.03 * measured["ppl, full-precision base"]
    base = resolve_base(TINY, None, BASES[TINY])
    fp, tok = load_base(base)
    # held-out text: a passage no training play contains (the test split is Hamlet and The Tempest)
    text = ("HAMLET. To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
            "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
            "And by opposing end them. To die--to sleep,\nNo more; and by a sleep to say we end\n"
            "The heart-ache and the thousand natural shocks\nThat flesh is heir to: 'tis a consummation\n"
            "Devoutly to be wish'd. To die, to sleep;\nTo sleep, perchance to dream--ay, there's the rub.\n")
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    ppl_fp = perplexity(fp, ids, context=512).ppl
    sd = zoo.load(TINY, calib_samples=16)
    assert sum(isinstance(m, SDLinear) for m in sd.modules()) == 28
    ppl_sd = perplexity(sd, ids, context=512).ppl
    assert ppl_fp < 400 and ppl_sd < 1.5 * ppl_fp, (ppl_fp, ppl_sd)  # a trained model, and a faithful conversion
    with torch.no_grad():
        integer = sd(input_ids=ids[None]).logits
        spike = zoo.load(TINY, calib_samples=16, mode="spike")(input_ids=ids[None]).logits  # from the cache
    assert torch.equal(integer, spike)
    assert neurons.mode_of(sd) == "integer"


def test_zoo_profile_takes_token_ids(shared_zoo_home, monkeypatch, capsys):
    from zoo.cli import main

    monkeypatch.setenv("ZOO_HOME", str(shared_zoo_home))
    assert main(["profile", TINY, "--input-size", "1", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input_size"] == [1, 16] and out["acs"] > 0 and out["macs"] > 0 and out["weights"] == "converted from its base"
