"""lm-eval tasks end to end through the adapter (`zoo eval --tasks`), offline, checked against the zoo's own
log-likelihood path (tasks.language.evaluate)."""

from __future__ import annotations

import json

import pytest

from tasks.language.evaluate import Question, loglikelihood, zero_shot
from tasks.language.harness import TASK_DIR
from zoo import cli

from .conftest import tiny_llama

TASK = "zoo_shakespeare_lines"


def _lm_eval():
    return pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'spiking-zoo[language-eval]')")


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    """No network, and the datasets cache in the test's folder."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def _docs(path=TASK_DIR / f"{TASK}.jsonl"):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _independent(model, tokenizer, docs):
    """acc as the zoo's zero_shot (sum of log-likelihoods), acc_norm as lm-eval defines it (per character of the
    choice, without the " " delimiter), both from the zoo's loglikelihood."""
    qs = [Question(d["context"], [" " + c for c in d["choices"]], d["label"]) for d in docs]
    acc = zero_shot(model, tokenizer, qs).acc
    right = 0
    for d in docs:
        lls = [ll for ll, _ in loglikelihood(model, tokenizer, [(d["context"], " " + c) for c in d["choices"]])]
        norm = [ll / len(c) for ll, c in zip(lls, d["choices"])]
        right += max(range(len(norm)), key=norm.__getitem__) == d["label"]
    return acc, right / len(docs)


def test_run_tasks_requests_and_metrics_match_the_zoo(tmp_path, tokenizer, offline_datasets):
    _lm_eval()
    from tasks.language.harness import run_tasks

    # a user's task folder: its data_files are relative to the YAML, not to the working directory
    user = tmp_path / "my_tasks"
    user.mkdir()
    docs = [{"context": "Question: how do you boil water?\nAnswer:", "choices": ["heat it in a pot", "freeze it"],
             "label": 0},
            {"context": "The quick brown fox", "choices": ["jumps over the lazy dog", "television"], "label": 0},
            {"context": "A spiking neuron fires when", "choices": ["the actor", "its membrane potential crosses"],
             "label": 1}]
    (user / "mine.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    yaml = (TASK_DIR / f"{TASK}.yaml").read_text().replace(f"task: {TASK}", "task: mine") \
        .replace(f"test: {TASK}.jsonl", "test: mine.jsonl")
    (user / "mine.yaml").write_text(yaml)
    model = tiny_llama()
    out = run_tasks(model, tokenizer, ["mine", TASK], include_path=[user], limit=6)
    for name, ds in (("mine", docs), (TASK, _docs()[:6])):
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        assert [s["doc"] for s in samples] == ds
        for s, d in zip(samples, ds):  # lm-eval's requests: (context, " " + choice), scored by the adapter
            pairs = [(d["context"], " " + c) for c in d["choices"]]
            assert [tuple(a) for a in s["arguments"]] == pairs
            ours = loglikelihood(model, tokenizer, pairs)  # the adapter batches other requests: same to float error
            assert [r[0][0] for r in s["resps"]] == pytest.approx([ll for ll, _ in ours], rel=1e-5)
            assert [r[0][1] for r in s["resps"]] == [g for _, g in ours]
        acc, acc_norm = _independent(model, tokenizer, ds)
        assert out["results"][name]["acc,none"] == pytest.approx(acc, abs=1e-12)
        assert out["results"][name]["acc_norm,none"] == pytest.approx(acc_norm, abs=1e-12)


def test_zoo_eval_tasks_on_the_tiny_shakespeare_model(shared_zoo_home, monkeypatch, capsys, offline_datasets):
    """`zoo eval sdllm-tiny-shakespeare --tasks ...`: lm-eval's accuracy equals the zoo's own computation."""
    _lm_eval()
    import zoo
    from transformers import AutoTokenizer

    from tasks.language.build import resolve_base
    from tasks.language.models import BASES, TINY

    monkeypatch.setenv("ZOO_HOME", str(shared_zoo_home))
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    assert cli.main(["eval", TINY, "--tasks", TASK, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    sd, fp = res["sdllm"]["metrics"][TASK], res["base"]["metrics"][TASK]
    assert sd["sample_len"] == fp["sample_len"] == len(_docs()) == 16
    assert res["sdllm"]["activity"]["firing_rate"] > 0 and res["base"]["activity"]["firing_rate"] is None

    base = resolve_base(TINY, None, BASES[TINY])
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = zoo.load(TINY, pretrained=False, base=str(base), mode="integer")  # what the command used (cached)
    acc, acc_norm = _independent(model, tokenizer, _docs())
    assert (sd["acc"], sd["acc_norm"]) == (pytest.approx(acc, abs=1e-12), pytest.approx(acc_norm, abs=1e-12))
    assert sd["acc"] > 0.25  # the model read these plays: better than chance on their famous lines

    assert cli.main(["eval", TINY, "--tasks", TASK, "--no-base", "--limit", "4"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{TINY} (integer): {TASK} acc ") and "(4 documents)" in line and "events/token" in line


def test_zoo_eval_needs_data_or_tasks(capsys):
    assert cli.main(["eval", "sdllm-tiny-shakespeare"]) == 2
    assert "--data PATH" in capsys.readouterr().err
    assert cli.main(["eval", "sdllm-tiny-shakespeare", "--data", "x.txt", "--tasks", TASK]) == 2
    assert "one of them" in capsys.readouterr().err
