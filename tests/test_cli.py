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
    # in a fresh process: a verb is offered exactly when some task implements it
    probe = subprocess.run([sys.executable, "-c", "import json; from zoo import cli; p = cli.build_parser(); "
                            "print(json.dumps([sorted(cli._TASK_COMMANDS), p.format_help()]))"],
                           capture_output=True, text=True)
    implemented, help_text = json.loads(probe.stdout)
    assert {"predict", "eval", "train", "bench"} <= set(implemented)
    for verb in implemented:
        assert verb in help_text and verb in out.stdout


def test_check_image_batch():
    check_image_batch(torch.rand(1, 3, 64, 64), "m", multiple=32)
    for bad, match in ((torch.rand(3, 64, 64), "shape"), (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float"),
                       (torch.rand(1, 3, 60, 64), "divisible"), ([1, 2], "Tensor")):
        with pytest.raises(ZooError, match=match):
            check_image_batch(bad, "m", multiple=32)
