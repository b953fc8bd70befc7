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
