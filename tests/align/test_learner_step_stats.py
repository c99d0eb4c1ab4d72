"""The learner's step sums (kept on the device, read back once) and its optional profile of one step."""

from __future__ import annotations

import pytest
import torch

from align.config.sections import LearnerConfig, ProfileConfig
from align.learner.step_stats import DeviceTotals, step_profile


def test_device_totals_match_python_sums() -> None:
    t = DeviceTotals()
    values = [torch.tensor(0.1, dtype=torch.float32), torch.tensor(0.7), torch.tensor(2.5)]
    for v in values:
        t.add("loss", v)
        t.add("tokens", 3)
    t.add("clip", torch.tensor(1.0))
    got = t.result()
    assert got["loss"] == sum(float(v) for v in values)  # the same float64 sum as float() of each, added in Python
    assert got == {"loss": got["loss"], "tokens": 9.0, "clip": 1.0}
    assert all(type(v) is float for v in got.values())
    assert DeviceTotals().result() == {}


def test_profile_writes_the_chosen_step_only(tmp_path, capsys) -> None:
    cfg = ProfileConfig(steps=[2], dir=str(tmp_path / "prof"))
    for step in (1, 2, 3):
        with step_profile(cfg, rank=0, step=step):
            torch.ones(64, 64) @ torch.ones(64, 64)
    assert sorted(p.name for p in (tmp_path / "prof").iterdir()) == ["learner0_step2.json.gz", "learner0_step2.txt"]
    assert "aten::mm" in (tmp_path / "prof" / "learner0_step2.txt").read_text()
    assert "learner 0: profiled step 2: wall" in capsys.readouterr().out
    with step_profile(None, rank=0, step=1):  # off: nothing written, nothing recorded
        pass


def test_profile_steps_count_from_one() -> None:
    with pytest.raises(ValueError, match="count from 1"):
        LearnerConfig(profile={"steps": [0], "dir": "x"})
