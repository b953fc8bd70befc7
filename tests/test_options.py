"""`zoo train --resume`: a run's last.pt, its folder, or (no value) the --out folder's."""

import pytest

from zoo.options import resume_path
from zoo.errors import ZooError


def test_resume_resolves_run_folders(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"x")
    assert resume_path(None, str(run)) is None
    assert resume_path("", str(run)) == run / "last.pt"  # bare --resume: the --out folder's
    assert resume_path(str(run), "elsewhere") == run / "last.pt"
    assert resume_path(str(run / "last.pt"), "elsewhere") == run / "last.pt"
    with pytest.raises(ZooError, match="no checkpoint at .*last.pt"):
        resume_path("", str(tmp_path / "empty"))
    with pytest.raises(ZooError, match="no checkpoint"):
        resume_path(str(tmp_path / "missing.pt"), str(run))
