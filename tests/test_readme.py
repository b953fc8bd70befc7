"""The README tells the truth: its model table and its commands."""

import re
from pathlib import Path

from zoo import readme, registry

ROOT = Path(__file__).resolve().parent.parent


def _commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_model_table_is_current():
    names = [n for n in registry.list_models() if n != "tinysnn-test"]
    text = (ROOT / "README.md").read_text()
    assert readme.render(text, readme.model_table(names)) == text, "run `python -m zoo.readme`"


def test_ci_runs_the_readme_test_command():
    main_cmd, test_cmd = _commands()[:2]
    assert "pytest" in test_cmd and "zoo " in main_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_use_snippets_run_as_written(tmp_path, shared_zoo_home):
    """Every ```python block of the README, as a user pastes it: a fresh process, in another folder, offline
    (the zoo cache is the run's shared one, so the tiny SDLLM is converted once per run)."""
    import os
    import subprocess
    import sys

    blocks = re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    env = {**os.environ, "ZOO_HOME": str(shared_zoo_home), "ZOO_OFFLINE": "1"}
    for block in blocks:
        out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=tmp_path, env=env,
                             timeout=1200)
        assert out.returncode == 0, f"README block failed:\n{block}\n{out.stderr[-3000:]}"
        assert out.stdout.strip(), block
