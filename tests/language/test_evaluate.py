"""Perplexity, zero-shot multiple choice, activity / energy per token, and `zoo eval` for language models."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tasks.language.evaluate import activity, load_choices, loglikelihood, perplexity, read_corpus, zero_shot
from tasks.language.sdllm import SDLLMConfig, convert
from zoo import cli
from zoo.errors import ZooError

from .conftest import TEXT, tiny_llama

WIKI = " = Robert Boulter = \n \n Robert Boulter is an English film , television and theatre actor . \n \n = = Career = = \n"


def _direct_nll(model, ids):
    with torch.no_grad():
        logits = model(ids.unsqueeze(0)).logits[0, :-1]
    return F.cross_entropy(logits.double(), ids[1:], reduction="sum").item(), ids.numel() - 1


def test_read_corpus_hf_join(tmp_path):
    f = tmp_path / "wiki.test.raw"
    f.write_text(WIKI)
    assert read_corpus(f, "raw") == WIKI
    rows = [" = Robert Boulter = \n", "", " Robert Boulter is an English film , television and theatre actor . \n", "",
            " = = Career = = \n"]
    assert read_corpus(f) == "\n\n".join(rows)


def test_perplexity_equals_direct_computation(tmp_path, tokenizer):
    model = tiny_llama()
    f = tmp_path / "wiki.test.raw"
    f.write_text(TEXT[:240])
    ids = tokenizer(read_corpus(f), return_tensors="pt")["input_ids"][0]
    n = ids.numel()
    assert 60 < n < 250
    # one window holds everything
    res = perplexity(model, f, tokenizer, context=256)
    nll, count = _direct_nll(model, ids)
    assert res.tokens == count == n - 1 and res.windows == 1
    assert res.ppl == pytest.approx(math.exp(nll / count), rel=1e-5)
    # non-overlapping windows of 32: each window scores its tokens after the first
    res = perplexity(model, ids, context=32)
    total, scored = 0.0, 0
    for b in range(0, n, 32):
        w = ids[b:b + 32]
        if w.numel() > 1:
            s, c = _direct_nll(model, w)
            total, scored = total + s, scored + c
    assert res.tokens == scored and res.ppl == pytest.approx(math.exp(total / scored), rel=1e-5)
    # sliding window, stride 16: every token after the first scored exactly once, with up to 32 tokens of context
    res = perplexity(model, ids, context=32, stride=16)
    total = 0.0
    with torch.no_grad():
        for t in range(1, n):
            k = (t - 32) // 16 + 1 if t >= 32 else 0  # the first window (start k * stride) that reaches t
            b = k * 16
            window = ids[b:t + 1].unsqueeze(0)
            logits = model(window).logits[0, -2]
            total -= F.log_softmax(logits.double(), -1)[ids[t]].item()
    assert res.tokens == n - 1 and res.ppl == pytest.approx(math.exp(total / (n - 1)), rel=1e-5)
    with pytest.raises(ZooError):
        perplexity(model, ids, context=32, stride=64)


PIQA = [
    {"goal": "How do you boil water?", "sol1": "heat it in a pot.", "sol2": "put it in the freezer.", "label": 0},
    {"goal": "What does a neuron do?", "sol1": "it fires when the potential crosses a threshold.", "sol2": "it sings.", "label": 0},
    {"goal": "Which animal jumps over the dog?", "sol1": "the cat", "sol2": "the quick brown fox", "label": 1},
]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_zero_shot_accuracy_equals_direct_loglikelihood(tmp_path, tokenizer):
    model = tiny_llama()
    f = _write_jsonl(tmp_path / "piqa_valid.jsonl", PIQA)
    res = zero_shot(model, tokenizer, f)
    assert res.task == "piqa" and res.questions == 3
    expected = []
    for q in PIQA:
        lls = []
        for sol in (q["sol1"], q["sol2"]):
            ctx = f"Question: {q['goal']}\nAnswer:"
            head = tokenizer(ctx)["input_ids"]
            whole = tokenizer(ctx + " " + sol)["input_ids"]
            assert whole[:len(head)] == head
            with torch.no_grad():
                logp = F.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            lls.append(sum(logp[i - 1, whole[i]].item() for i in range(len(head), len(whole))))
        expected.append(max(range(2), key=lambda i: lls[i]))
    assert res.predictions == expected
    assert res.acc == pytest.approx(sum(p == q["label"] for p, q in zip(expected, PIQA)) / 3)


def test_batched_loglikelihood_matches_single(tokenizer):
    model = tiny_llama()
    pairs = [("Question: a b\nAnswer:", " short"), ("Q", " a much longer continuation than the other one")]
    batch = loglikelihood(model, tokenizer, pairs)
    single = [loglikelihood(model, tokenizer, [p])[0] for p in pairs]
    for (a, _), (b, _) in zip(batch, single):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4)


def test_task_formats(tmp_path):
    arc_hf = {"id": "x", "question": "Which is a gas?", "choices": {"text": ["rock", "steam"], "label": ["A", "B"]}, "answerKey": "B"}
    arc_orig = {"question": {"stem": "Which is a gas?", "choices": [{"text": "rock", "label": "1"}, {"text": "steam", "label": "2"}]},
                "answerKey": "2"}
    hs = {"activity_label": "Baking", "ctx_a": "She mixes the flour.", "ctx_b": "then she", "ctx": "She mixes the flour. then she",
          "endings": ["bakes it [title] now.", "sings.", "runs.", "sleeps."], "label": "0"}
    wg = {"sentence": "The trophy did not fit in the suitcase because _ was too big.", "option1": "the trophy",
          "option2": "the suitcase", "answer": "1"}
    task, qs = load_choices(_write_jsonl(tmp_path / "ARC-Challenge-test.jsonl", [arc_hf, arc_orig]))
    assert task == "arc_challenge" and [q.label for q in qs] == [1, 1] and qs[0].choices == [" rock", " steam"]
    assert load_choices(_write_jsonl(tmp_path / "arc.jsonl", [arc_hf]))[0] == "arc_easy"
    task, (q,) = load_choices(_write_jsonl(tmp_path / "hs.jsonl", [hs]))
    assert task == "hellaswag" and q.context == "Baking: She mixes the flour. Then she" and q.choices[0] == " bakes it. now."
    task, (q,) = load_choices(_write_jsonl(tmp_path / "wg.jsonl", [wg]))
    assert task == "winogrande" and q.label == 0 and q.contexts[1].endswith("because the suitcase")
    assert q.choices == [" was too big.", " was too big."]
    with pytest.raises(ZooError, match="cannot tell"):
        load_choices(_write_jsonl(tmp_path / "x.jsonl", [{"a": 1}]))
    with pytest.raises(ZooError, match="public fields"):
        load_choices(_write_jsonl(tmp_path / "y.jsonl", [{"goal": "g", "sol1": "a", "label": 0}]))


def test_activity_and_energy_per_token(calib_ids):
    ids = calib_ids[:1, :24]
    fp = activity(tiny_llama(), ids)
    assert fp.firing_rate is None and fp.acs_per_token == 0 and fp.events_per_token == 0
    model = convert(tiny_llama(), calib_ids, SDLLMConfig())
    sd = activity(model, ids)
    assert sd.firing_rate > 0 and sd.events_per_token > 0
    # only lm_head is MACs in the converted model
    assert sd.macs_per_token == model.lm_head.in_features * model.lm_head.out_features
    expected = (sd.acs_per_token * 0.9 + sd.macs_per_token * 4.6) * 1e-9
    assert sd.energy_per_token_mj == pytest.approx(expected, rel=1e-9)
    assert sd.energy_per_token_mj < fp.energy_per_token_mj


def test_zoo_eval_cli(zoo_home, llama_dir, tmp_path, capsys):
    text = tmp_path / "wiki.test.raw"
    text.write_text(TEXT[:300])
    argv = ["eval", "sdllm-llama2-7b", "--data", str(text), "--base", str(llama_dir), "--context", "64",
            "--calib-file", str(text), "--calib-seq-len", "64"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sdllm-llama2-7b (integer): ppl ") and "events/token" in out[0] and "mJ/token" in out[0]
    assert out[1].startswith("full-precision base: ppl ")
    jsonl = _write_jsonl(tmp_path / "piqa.jsonl", PIQA)
    assert cli.main(["eval", "sdllm-llama2-7b", "--data", str(jsonl), "--base", str(llama_dir), "--json", "--mode", "spike",
                     "--no-base", "--calib-file", str(text), "--calib-seq-len", "64"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sdllm"]["task"] == "piqa" and res["sdllm"]["questions"] == 3 and "base" not in res
    assert res["sdllm"]["activity"]["firing_rate"] > 0
    assert cli.main(["eval", "sdllm-llama2-7b", "--data", str(tmp_path / "missing.txt"), "--base", str(llama_dir)]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_lm_eval_adapter_with_a_stand_in_lm_eval(monkeypatch, tokenizer):
    import sys
    import types

    try:
        import lm_eval.api.model  # noqa: F401
    except ImportError:  # lm_eval is an optional dependency: stand in for its LM base class
        api, model_mod = types.ModuleType("lm_eval.api"), types.ModuleType("lm_eval.api.model")
        model_mod.LM = type("LM", (), {"__init__": lambda self: None})
        monkeypatch.setitem(sys.modules, "lm_eval", types.ModuleType("lm_eval"))
        monkeypatch.setitem(sys.modules, "lm_eval.api", api)
        monkeypatch.setitem(sys.modules, "lm_eval.api.model", model_mod)
    monkeypatch.delitem(sys.modules, "tasks.language.lm_eval_adapter", raising=False)
    from tasks.language.lm_eval_adapter import SDLLMEvalLM

    # the adapter built on the stand-in leaves with the test (the next import sees the real lm_eval)
    monkeypatch.setitem(sys.modules, "tasks.language.lm_eval_adapter", sys.modules["tasks.language.lm_eval_adapter"])

    model = tiny_llama()
    lm = SDLLMEvalLM(model, tokenizer, max_length=16)
    req = types.SimpleNamespace
    pairs = [("Question: a\nAnswer:", " yes"), ("The fox", " jumps")]
    assert lm.loglikelihood([req(args=p) for p in pairs]) == loglikelihood(model, tokenizer, pairs)
    (rolling,) = lm.loglikelihood_rolling([req(args=(TEXT[:120],))])
    ids = [tokenizer.bos_token_id] + tokenizer(TEXT[:120], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        full = F.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    assert len(ids) > 16  # several windows
    assert rolling < 0 and rolling == pytest.approx(sum(full[i - 1, ids[i]].item() for i in range(1, len(ids))), rel=0.05)
    (text,) = lm.generate_until([req(args=("The quick", {"until": ["\n"], "max_gen_toks": 5}))])
    assert isinstance(text, str)


def test_corpus_layout_wikitext_raw_or_a_line_naming_join(tmp_path, tokenizer):
    from tasks.language.evaluate import corpus_layout

    wiki = WIKI + " The film grossed $ 1 @,@ 000 in a well @-@ known cinema . \n"
    assert corpus_layout(WIKI) == corpus_layout(wiki) == "hf"  # headings + indented lines / @-@ tokens
    plain = "ROMEO. But soft, what light through yonder window breaks?\n\nIt is the east, and Juliet is the sun.\n"
    assert corpus_layout(plain) == corpus_layout(TEXT) == "raw"
    f, g = tmp_path / "wiki.test.raw", tmp_path / "plays.txt"
    f.write_text(wiki)
    g.write_text(plain)
    assert read_corpus(f) == read_corpus(f, "hf") != wiki and read_corpus(g) == read_corpus(g, "raw") == plain
    model = tiny_llama()
    for path, join in ((f, "hf"), (g, "raw")):  # auto scores what the explicit layout scores
        assert perplexity(model, path, tokenizer, context=32).nll == perplexity(model, path, tokenizer, context=32,
                                                                               join=join).nll
    # one sign without the others: WikiText-like headings in unindented text, or @-@ tokens alone
    for text in ("Intro line\n = Heading = \nMore plain text here.\nAnd more.\n", "a well @-@ known actor .\n"):
        h = tmp_path / "odd.txt"
        h.write_text(text)
        with pytest.raises(ZooError, match="--join hf") as e:
            read_corpus(h)
        assert "--join raw" in str(e.value) and "\n" not in str(e.value) and "odd.txt" in str(e.value)
        assert read_corpus(h, "raw") == text
    with pytest.raises(ZooError, match="join must be"):
        read_corpus(g, "wiki")


def test_zoo_eval_names_join_for_an_ambiguous_corpus(zoo_home, llama_dir, tmp_path, capsys):
    odd = tmp_path / "odd.txt"
    odd.write_text("Intro line\n = Heading = \n" + TEXT[:200])
    argv = ["eval", "sdllm-llama2-7b", "--data", str(odd), "--base", str(llama_dir), "--context", "64", "--no-base",
            "--calib-file", str(odd), "--calib-seq-len", "64"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--join hf" in err[0]  # before the model is converted
    assert cli.main(argv + ["--join", "raw", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sdllm"]["task"] == "perplexity"
