"""truncation.count_truncation on the rows TRL's own tokenization produces, checked row by row against what
TRL's own collator puts in a batch; check_truncation refuses above its shares, naming max_length."""

import json

import pytest
import yaml

from aot_handbook.io import read_jsonl
from aot_handbook.recipe import parse_recipe
from aot_handbook.training import build_trainer, load_data
from aot_handbook.truncation import TruncationError, check_truncation, count_truncation

PROMPT = 7  # "<bos>47+38=": the tiny prompts are 7 tokens, the answers "085<eos>" 4


def _trainer(tmp_path, tiny, method: str, train_file, max_length: int, mode: str | None = None):
    recipe = {"method": method, "model_name_or_path": str(tiny["base_model"]), "dtype": "float32",
              "dataset_mixture": {"datasets": [{"data_files": {"train": str(train_file)}, "test_split": None}]},
              "bf16": False, "use_cpu": True, "gradient_checkpointing": False, "report_to": "none",
              "save_strategy": "no", "max_steps": 1, "per_device_train_batch_size": 4, "summary": False,
              "precompute_ref_log_probs": False, "max_length": max_length, "output_dir": str(tmp_path / "run")}
    if mode:
        recipe["truncation_mode"] = mode
    path = tmp_path / f"{method}-{max_length}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    parsed, data = load_data(parse_recipe(str(path)))
    _, _, trainer = build_trainer(parsed, data, check_lengths=False)  # counted here, not refused
    return trainer, len(data["train"])


def _collated(trainer, row):
    """What TRL's collator makes of one row: per sequence, (tokens, which of them are scored)."""
    batch = trainer.data_collator([row])
    out = []
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        out.append((tuple(batch["input_ids"][i, :n].tolist()), tuple(batch["completion_mask"][i, :n].tolist())))
    return out


@pytest.fixture(scope="module")
def few_pairs(tiny, tmp_path_factory):
    """200 tiny pairs (carry and no-carry), so each trainer tokenizes in a second."""
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(tiny["paired_train"])[:200]))
    return path


@pytest.mark.parametrize("max_length,mode", [(7, None), (8, None), (9, None), (10, None), (11, None), (None, None),
                                             (9, "keep_end")])
def test_paired_counts_match_trls_collator_row_by_row(tiny, tmp_path, few_pairs, max_length, mode):
    trainer, before = _trainer(tmp_path, tiny, "aot_paired", few_pairs, max_length, mode)
    rows = trainer.train_dataset
    report = count_truncation(rows, max_length=max_length, truncation_mode=mode or "keep_start", rows_before=before)
    # the reference: TRL's collator on each row (rows = [chosen, rejected])
    cut = same = 0
    for row in rows:
        (c_ids, c_mask), (r_ids, r_mask) = _collated(trainer, row)
        cut += sum(c_mask) < len(row["chosen_ids"]) or sum(r_mask) < len(row["rejected_ids"])
        same += (c_ids, c_mask) == (r_ids, r_mask)
    assert (report.rows, report.answer_cut, report.identical) == (len(rows), cut, same)
    assert report.dropped == before - len(rows)
    if max_length == 7:  # the prompt alone fills it: TRL dropped every row, silently
        assert report.rows == 0 and report.dropped == 200
    if max_length == 8:  # one answer token left: its first digit, the same in most pairs
        assert report.answer_cut == 200 and report.identical > 150
    if max_length in (11, None):
        assert report.answer_cut == report.identical == report.dropped == 0
    if mode == "keep_end":
        assert report.prompt_cut == 200 and report.identical == 0  # the answers are kept, the prompt's start cut


def test_unpaired_counts_match_trls_collator_and_catch_a_label_flip(tiny, tmp_path, few_pairs):
    """Unpaired rows of the same pairs (chosen -> label true, rejected -> false): once cut to one answer
    token, one prompt trains on the same sequence as a positive and as a negative."""
    rows = []
    for r in read_jsonl(few_pairs):
        rows += [{"prompt": r["prompt"], "completion": r["chosen"], "label": True},
                 {"prompt": r["prompt"], "completion": r["rejected"], "label": False}]
    path = tmp_path / "unpaired.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for max_length in (8, 10):
        trainer, before = _trainer(tmp_path, tiny, "aot_unpaired", path, max_length)
        data = trainer.train_dataset
        assert {"prompt_ids", "completion_ids", "label"} <= set(data.column_names)
        report = count_truncation(data, max_length=max_length, rows_before=before)
        kept = {}
        cut = 0
        for row in data:
            ((ids, mask),) = _collated(trainer, row)
            cut += sum(mask) < len(row["completion_ids"])
            kept.setdefault(tuple(row["prompt_ids"]), {True: set(), False: set()})[bool(row["label"])].add((ids, mask))
        flips = sum(bool(s[True] & s[False]) for s in kept.values())
        assert (report.kind, report.rows, report.answer_cut, report.identical) == ("unpaired", 400, cut, flips)
        assert (flips > 150) if max_length == 8 else flips == 0


def test_check_refuses_above_the_shares_naming_max_length(tiny, tmp_path, few_pairs):
    trainer, before = _trainer(tmp_path, tiny, "aot_paired", few_pairs, 8)
    report = count_truncation(trainer.train_dataset, max_length=8, rows_before=before)
    with pytest.raises(TruncationError) as err:
        check_truncation([report], source="recipe.yaml")
    message = str(err.value)
    assert message.startswith("recipe.yaml: max_length cuts the training data: train split: 200 of 200 with an "
                              "answer cut (100.0% > 10%)")
    assert "with chosen == rejected in the tokens trained on" in message
    assert "Change key 'max_length'" in message and "the longest prompt + answer is 11 tokens" in message
    trainer, before = _trainer(tmp_path, tiny, "aot_paired", few_pairs, 11)
    whole = count_truncation(trainer.train_dataset, max_length=11, rows_before=before)
    (line,) = check_truncation([whole], source="recipe.yaml")
    assert line.startswith("truncation, train split (max_length 11, keep_start): 200 pairs; dropped")


def test_shares_are_thresholds_not_zero_tolerance():
    rows = [{"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5], "rejected_ids": [3, 6]} for _ in range(19)]
    rows.append({"prompt_ids": [1, 2], "chosen_ids": list(range(10, 30)), "rejected_ids": [3, 6]})
    report = count_truncation(rows, max_length=8)
    assert (report.answer_cut, report.identical, report.longest) == (1, 0, 22)
    assert len(check_truncation([report])) == 1  # 5% cut: under the 10% default
    with pytest.raises(TruncationError, match="1 of 20 with an answer cut"):
        check_truncation([report], max_cut_share=0.02)
    with pytest.raises(ValueError, match="tokenized rows need prompt_ids"):
        count_truncation([{"prompt": "x"}], max_length=8)


@pytest.mark.parametrize("method", ["aot_paired", "kto"])
def test_building_the_trainer_refuses_a_max_length_that_cuts_the_answers_away(tiny, tmp_path, few_pairs, method):
    """At max_length 8 (7-token prompts) every answer keeps one digit: refused while the trainer is built, naming
    max_length; at 11 every row is whole and it builds, printing its count."""
    data = few_pairs
    if method == "kto":  # the unpaired rows of the same pairs: each prompt with a positive and a negative answer
        data = tmp_path / "unpaired.jsonl"
        data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"}) + "\n"
                                for r in read_jsonl(few_pairs) for k in ("chosen", "rejected")))
    with pytest.raises(TruncationError, match=r"max_length cuts the training data: train split: .*"
                                               r"Change key 'max_length'.*now 8"):
        _checked(tmp_path, tiny, method, data, 8)
    _checked(tmp_path, tiny, method, data, 11)


def _checked(tmp_path, tiny, method, train_file, max_length):
    recipe = {"method": method, "model_name_or_path": str(tiny["base_model"]), "dtype": "float32",
              "dataset_mixture": {"datasets": [{"data_files": {"train": str(train_file)}, "test_split": None}]},
              "bf16": False, "use_cpu": True, "gradient_checkpointing": False, "report_to": "none",
              "save_strategy": "no", "max_steps": 1, "per_device_train_batch_size": 4, "summary": False,
              "precompute_ref_log_probs": False, "max_length": max_length, "output_dir": str(tmp_path / "run")}
    path = tmp_path / f"{method}-{max_length}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return build_trainer(parse_recipe(str(path)))
