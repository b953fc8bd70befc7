"""A checkpoint as mmengine's Runner writes it (tests/fixtures/mmengine/README.md) is read safely.

Its ``message_hub`` pickles ``HistoryBuffer`` objects whose ``__getstate__`` adds their statistics
methods, which pickle stores as ``builtins.getattr(HistoryBuffer, 'min')``; the safe reader allows
``getattr`` on stubs of official classes only (it gives another stub), so mmengine checkpoints load.
"""

from pathlib import Path

import pytest

from zoo import checkpoint

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mmengine" / "runner_iter4.pth"


def test_mmengine_runner_checkpoint_reads():
    ckpt = checkpoint.read(FIXTURE)
    assert set(ckpt) == {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers"}
    assert ckpt["meta"]["dataset_meta"]["classes"] == ("a", "b")
    state = checkpoint.to_state_dict(ckpt)
    assert sorted(state) == ["backbone.0.bias", "backbone.0.weight", "backbone.1.bias",
                             "backbone.1.num_batches_tracked", "backbone.1.running_mean",
                             "backbone.1.running_var", "backbone.1.weight"]
