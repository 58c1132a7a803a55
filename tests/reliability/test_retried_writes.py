"""A write task that Ray runs again (its node was lost after the task's commit record landed, before Ray saw the
task finish) must not commit its items a second time: the retry finds them committed from the same sources and
reports them ok; an item another job committed meanwhile from another source is skipped."""
import json

import numpy as np

from featurestore import FeatureStore, TokenSchema, fingerprint
from pipelines.materialize import ALREADY_COMMITTED, write_part


def batch(ids: list[str], sources: list[dict]) -> dict:
    """write_part's input as the encoder hands it over: encoded items still to be written ("todo")."""
    n = len(ids)
    return {"id": np.array(ids), "status": np.array(["todo"] * n), "reason": np.array([""] * n),
            "tokens": [np.full((3, 2, 4), i, np.float32) for i in range(n)],
            "t_start": [np.arange(3.0)] * n, "t_end": [np.arange(3.0) + 1] * n,
            "source": np.array([json.dumps(s) for s in sources]), "supersedes": np.array([False] * n),
            "decode_s": np.zeros(n), "encode_s": np.zeros(n)}


def test_a_retried_write_commits_nothing_twice(tmp_path):
    version = FeatureStore(str(tmp_path / "store")).create_version(
        TokenSchema("audio", 2, 4, "float32", attrs={"time_kind": "span"}), fingerprint("t", "none", {}, "float32", "1"))
    sources = [{"path": f"/v/{name}.mp4", "size": 10} for name in "abc"]
    first = write_part(batch(["a", "b"], sources[:2]), version, "job")
    retried = write_part(batch(["a", "b"], sources[:2]), version, "job")
    assert list(first["status"]) == list(retried["status"]) == ["ok", "ok"]
    assert len(version.index(fresh=True).records) == 1  # one commit record: the retry wrote no part

    with version.writer("other job") as writer:  # another job commits c from another source meanwhile
        writer.add("c", np.zeros((3, 2, 4), np.float32), np.arange(3.0), np.arange(3.0) + 1,
                   source={"path": "/elsewhere/c.mp4", "size": 99})
    late = write_part(batch(["c"], sources[2:]), version, "job")
    assert (list(late["status"]), list(late["reason"])) == (["skipped"], [ALREADY_COMMITTED])
    assert len(version.index(fresh=True).records) == 2
    np.testing.assert_array_equal(version.get("a").tokens, np.zeros((3, 2, 4)))
    np.testing.assert_array_equal(version.get("b").tokens, np.ones((3, 2, 4)))
