"""The `zoo` command line, as a user runs it."""

import json
import subprocess
import sys

import pytest
import torch

from zoo import checkpoint, cli
from zoo.inputs import check_image_batch
from zoo.errors import ZooError


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_and_json(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and "tinysnn-test" in out and "params" in out.splitlines()[0]
    code, out, _ = run(capsys, "list", "--task", "detection", "--json")
    rows = json.loads(out)
    assert any(r["name"] == "tinysnn-test" and r["params"] > 0 for r in rows)


def test_info(capsys):
    code, out, _ = run(capsys, "info", "tinysnn-test")
    assert code == 0 and "task: detection" in out and "metrics:" in out
    code, out, _ = run(capsys, "info", "tinysnn-test", "--json")
    assert json.loads(out)["T"] == 2


def test_unknown_model_is_one_line_error(capsys):
    code, out, err = run(capsys, "info", "tinysnn-tset")
    assert code == 2 and err.count("\n") == 1 and "did you mean tinysnn-test" in err


def test_download_without_weights(capsys):
    code, _, err = run(capsys, "download", "tinysnn-test")
    assert code == 2 and "no released weights" in err


def test_profile(capsys, tmp_path, tiny):
    code, out, _ = run(capsys, "profile", "tinysnn-test")
    assert code == 0 and "random weights" in out and "mJ" in out
    path = checkpoint.save_safetensors(tiny.state_dict(), tmp_path / "t.safetensors")
    code, out, _ = run(capsys, "profile", "tinysnn-test", "--weights", str(path), "--mode", "spike", "--json")
    d = json.loads(out)
    assert code == 0 and d["mode"] == "spike" and d["acs"] > 0 and d["macs"] > 0 and d["energy_mj"] > 0
    assert {l["name"] for l in d["layers"]} >= {"stem", "lif1", "conv", "lif2", "head"}
    code, _, err = run(capsys, "profile", "tinysnn-test", "--input-size", "1", "4", "8", "8")
    assert code != 0


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "zoo.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "profile" in out.stdout
    # a verb is offered exactly when some task implements it
    verbs = cli._task_verbs()
    assert {"predict", "eval", "train", "bench"} <= set(verbs)
    assert set(verbs["bench"]) >= {"detection", "language"}
    for verb in verbs:
        assert verb in out.stdout


def test_foreign_option_is_one_line_error(capsys):
    code, out, err = run(capsys, "eval", "sdllm-tiny-shakespeare", "--imgsz", "5")
    assert code == 2 and err.count("\n") == 1 and "unrecognized option --imgsz" in err
    code, _, err = run(capsys, "predict", "tinysnn-test", "x.jpg", "--base", "b")
    assert code == 2 and "unrecognized option --base" in err
    code, _, err = run(capsys, "profile", "tinysnn-test", "--base", "b")  # --base is a language option
    assert code == 2 and "unrecognized option --base" in err
    code, _, err = run(capsys, "predict", "sdllm-tiny-shakespeare", "x.txt")
    assert code == 2 and "not available for language models" in err and err.count("\n") == 1
    code, _, err = run(capsys, "bench", "nosuchtask")
    assert code == 2 and "unknown task" in err


def test_help_shows_only_the_task_options(capsys):
    for argv, present, absent in ((("eval", "sdllm-tiny-shakespeare"), "--context", "--imgsz"),
                                  (("eval", "tinysnn-test"), "--imgsz", "--context"),
                                  (("bench", "detection"), "--no-map", "--new-tokens"),
                                  (("bench", "language"), "--new-tokens", "--no-map"),
                                  (("profile", "sdllm-tiny-shakespeare"), "--base", "--imgsz"),
                                  (("profile", "tinysnn-test"), "--preset", "--base")):
        with pytest.raises(SystemExit) as e:
            cli.main([*argv, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and present in out and absent not in out, argv
    code, out, _ = run(capsys, "eval", "--help")
    assert code == 0 and "detection" in out and "language" in out


def test_help_and_list_import_no_torch():
    probe = ("import sys, io, contextlib; from zoo import cli\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    cli.main(['list']); cli.main(['eval', '--help']); cli.main(['info', 'spikeyolo-coco'])\n"
             "print(sorted(m for m in ('torch', 'numpy', 'spikingjelly', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_check_image_batch():
    check_image_batch(torch.rand(1, 3, 64, 64), "m", multiple=32)
    for bad, match in ((torch.rand(3, 64, 64), "shape"), (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float"),
                       (torch.rand(1, 3, 60, 64), "divisible"), ([1, 2], "Tensor")):
        with pytest.raises(ZooError, match=match):
            check_image_batch(bad, "m", multiple=32)
