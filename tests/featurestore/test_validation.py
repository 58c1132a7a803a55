"""Bad input is refused at add() with a FeatureError naming the video and the reason, and nothing is committed."""
import numpy as np
import pytest
import torch

import fsdata
from featurestore import FeatureError, FeatureStore


def _good(n=4, dtype=np.float16):
    t = np.arange(n) * 0.5
    return {"tokens": np.ones((n, 4, 8), dtype), "t_start": t, "t_end": t + 0.5, "view": np.zeros(n, np.int32)}


def _with(**changes):
    return {**_good(), **changes}


def _without(name):
    rows = _good()
    del rows[name]
    return rows


nan_tokens = np.ones((4, 4, 8), np.float16)
nan_tokens[2, 1, 3] = np.nan
inf_tokens = np.ones((4, 4, 8), np.float16)
inf_tokens[0, 0, 0] = np.inf

BAD = {
    "float32 tokens into a float16 schema": (_with(tokens=np.ones((4, 4, 8), np.float32)), "float32"),
    "torch float32 into float16": (_with(tokens=torch.ones(4, 4, 8)), "float32"),
    "bfloat16 into float16": (_with(tokens=torch.ones(4, 4, 8, dtype=torch.bfloat16)), "bfloat16"),
    "wrong tokens_per_step": (_with(tokens=np.ones((4, 5, 8), np.float16)), "shape"),
    "2-D tokens": (_with(tokens=np.ones((4, 32), np.float16)), "shape"),
    "zero rows": ({**_good(0)}, "shape"),
    "NaN tokens": (_with(tokens=nan_tokens), "rows [2]"),
    "inf tokens": (_with(tokens=inf_tokens), "NaN/inf"),
    "t_start goes back": (_with(t_start=np.array([0.0, 1.0, 0.5, 2.0]), t_end=np.array([0.0, 1.0, 0.5, 2.0])), "must be non-decreasing"),
    "t_end < t_start": (_with(t_end=np.array([0.5, 0.4, 1.5, 2.0])), "t_end < t_start in rows [1]"),
    "fewer times than rows": (_with(t_start=np.arange(3.0)), "t_start shape"),
    "fewer extra rows than tokens": (_with(view=np.zeros(3, np.int32)), "view shape"),
    "NaN timestamp": (_with(t_start=np.array([0.0, np.nan, 1.0, 1.5])), "NaN"),
    "lossy extra dtype": (_with(view=np.zeros(4, np.int64)), "without loss"),
    "missing extra": (_without("view"), "extras"),
    "unknown extra": (_with(pose=np.zeros((4, 4, 4), np.float32)), "extras"),
    "string times": (_with(t_start=np.array(["0", "1", "2", "3"])), "t_start"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_and_nothing_committed(tmp_path, case):
    rows, reason = BAD[case]
    version = fsdata.version(tmp_path / "store")
    with pytest.raises(FeatureError, match="'clip_bad'") as error:
        with version.writer() as w:
            w.add("clip_ok", **_good())
            w.add("clip_bad", **rows)
    assert reason in str(error.value)
    reader = FeatureStore(tmp_path / "store").version("video")
    assert reader.committed_items() == set() and reader.failures() == {}
    assert not (tmp_path / "store" / version.path / "commits").exists()


def test_bfloat16_nan_is_found_in_the_bits(tmp_path):
    version = fsdata.version(tmp_path / "store", "bfloat16")
    tokens = torch.ones(4, 4, 8, dtype=torch.bfloat16)
    tokens[3, 0, 0] = float("nan")
    with pytest.raises(FeatureError, match=r"'clip_bad'.*rows \[3\]"):
        version.writer().add("clip_bad", **_with(tokens=tokens))


def test_duplicate_id_in_a_part(tmp_path):
    version = fsdata.version(tmp_path / "store")
    with pytest.raises(FeatureError, match="'clip'.*twice"):
        with version.writer() as w:
            w.add("clip", **_good())
            w.fail("clip", "decoder error")
    assert FeatureStore(tmp_path / "store").version("video").committed_items() == set()


def test_a_caught_error_can_be_recorded_as_a_failure(tmp_path):
    """The pattern pipelines use: refuse one bad video, keep the rest of the part."""
    version = fsdata.version(tmp_path / "store")
    with version.writer() as w:
        w.add("clip_ok", **_good())
        try:
            w.add("clip_bad", **_with(tokens=nan_tokens))
        except FeatureError as e:
            w.fail("clip_bad", str(e))
    assert version.items() == ["clip_ok"]
    assert "NaN/inf" in version.failures()["clip_bad"]
    np.testing.assert_array_equal(version.get("clip_ok").tokens, _good()["tokens"])
    with pytest.raises(KeyError, match="clip_bad.*NaN/inf"):
        version.get("clip_bad")
