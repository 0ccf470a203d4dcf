"""aot_handbook.evaluation.results: a result file that is not JSON is named, by every reader."""

import json

import pytest

from aot_handbook.errors import UserError
from aot_handbook.evaluation.results import load_results, read_samples


def test_a_truncated_result_file_is_named_by_every_reader(tmp_path):
    """Issue 30: a result JSON cut short (a copy, a write that was not atomic) ended aot-table and aot-compare in a
    JSONDecodeError traceback."""
    good = tmp_path / "results" / "a" / "tiny.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps({"run": {"name": "a"}, "scores": {"x": 1.0}}))
    assert [r["run"]["name"] for r in load_results(tmp_path / "results")] == ["a"]
    cut = tmp_path / "results" / "b" / "tiny.json"
    cut.parent.mkdir()
    cut.write_text(good.read_text()[:20])
    with pytest.raises(UserError, match=rf"^{cut}: not a valid result file \(.*\): evaluate the run again"):
        load_results(tmp_path / "results")  # aot-table, aot-plot --figure
    with pytest.raises(UserError, match=rf"^{cut}: not a valid result file"):
        read_samples(cut)  # aot-compare
