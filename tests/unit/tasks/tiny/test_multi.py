"""aot_handbook.tasks.tiny.multi: the two-attribute tiny task, each attribute judged by program."""

import numpy as np


def test_tiny_task_judges_both_attributes(tiny_multi):
    from aot_handbook.tasks.tiny.arithmetic import read_jsonl
    from aot_handbook.tasks.tiny.multi import judge_attributes

    assert judge_attributes("47+38=", "085") == {"sum": True, "format": True}
    assert judge_attributes("47+38=", "075.") == {"sum": False, "format": False}
    assert judge_attributes("47+38=", "085.<eos>") == {"sum": True, "format": False}
    rows = read_jsonl(tiny_multi["unpaired_train"])
    both = np.array([[r["sum_ok"], r["format_ok"]] for r in rows])
    assert abs(both.mean(0) - 0.5).max() < 0.05  # each attribute right half of the time
    assert abs(np.corrcoef(both.T)[0, 1]) < 0.05  # independently
    sft = read_jsonl(tiny_multi["sft_train"])
    period = np.mean([r["completion"].endswith(".") for r in sft])
    assert 0.55 < period < 0.65  # the planted format flaw
