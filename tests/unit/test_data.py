"""aot_handbook.data: a recipe's dataset_mixture -> train/test datasets in a method's format; errors that name the
dataset, split, file and column; the attribute labels of multi-attribute AOT."""

import json
import logging
import os

import datasets  # noqa: E402
import numpy as np
import pytest  # noqa: E402

from aot_handbook.data import (  # noqa: E402
    FORMATS,
    DatasetMixture,
    DatasetSpec,
    binarize,
    load_mixture,
    score_threshold,
)
from tests.helpers import HS, helpsteer_rows, write_jsonl_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
datasets.disable_progress_bars()



def dataset_format(ds) -> str:
    """Which of FORMATS a loaded dataset is in (what target "paired_or_unpaired" gave)."""
    return next(k for k in ("paired", "unpaired", "sft") if set(FORMATS[k]) <= set(ds.column_names))

def attribute_mixture(files, attributes, **extra):
    return {"datasets": [{"data_files": files, "attributes": attributes, **extra}]}


def load_attribute_mixture(block, source="test.yaml"):
    from aot_handbook.data import DatasetMixture, load_mixture

    return load_mixture(DatasetMixture.from_dict(block, source=source), target="unpaired")


BT = {"animal_abuse": "animal_abuse", "violence": "violence,aiding_and_abetting,incitement",
      "privacy_violation": "privacy_violation"}


SRC = "recipes/test.yaml"


def jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pairs(n, tag="p"):
    return [{"prompt": f"{tag}{i}", "chosen": f"good {tag}{i}", "rejected": f"bad {tag}{i}"} for i in range(n)]


def conv(role_text):
    return [{"role": r, "content": t} for r, t in role_text]


def train_only(tmp_path, rows, name="a.jsonl", **kw):
    """A dataset entry with one local train file and no test split."""
    return {"data_files": {"train": jsonl(tmp_path / name, rows)}, "test_split": None, **kw}


def mixture(*datasets_, **kw):
    return DatasetMixture.from_dict({"datasets": list(datasets_), **kw}, source=SRC)


def load(*datasets_, target="paired", **kw):
    return load_mixture(mixture(*datasets_, **kw), target=target)


ATTRS = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def helpsteer(name, attrs):
    return {"prompt": "q", "response": name, **dict(zip(ATTRS, attrs))}


def test_binarize_median_even_and_odd_and_fixed_threshold():
    assert score_threshold([1, 2, 3, 4]) == 2.5
    assert binarize([4, 1, 3, 2]) == [True, False, True, False]
    assert binarize([1, 2, 3]) == [False, False, True]  # the median itself is not above the median
    assert binarize([1, 2, 3], threshold=0.5) == [True, True, True]
    assert score_threshold([10, 20, 30], 7) == 7.0


def test_local_jsonl_custom_split_names_and_column_mapping(tmp_path):
    rows = [{"question": f"q{i}", "good": f"g{i}", "bad": f"b{i}", "extra": i} for i in range(4)]
    spec = {
        "data_files": {"train_prefs": jsonl(tmp_path / "tr.jsonl", rows),
                       "test_prefs": jsonl(tmp_path / "te.jsonl", rows[:2])},
        "train_split": "train_prefs",
        "test_split": "test_prefs",
        "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"},
    }
    out = load(spec)
    assert set(out) == {"train", "test"}
    assert out["train"].column_names == list(FORMATS["paired"])  # `extra` dropped so mixtures concatenate
    assert len(out["train"]) == 4 and len(out["test"]) == 2
    triples = {(r["prompt"], r["chosen"], r["rejected"]) for r in out["train"]}
    assert triples == {(f"q{i}", f"g{i}", f"b{i}") for i in range(4)}
    assert dataset_format(out["train"]) == "paired"


def test_column_mapping_replaces_a_column_of_the_same_name(tmp_path):
    rows = [{"prompt": "raw", "question": f"q{i}", "chosen": "y", "rejected": "n"} for i in range(2)]
    out = load({"data_files": {"train": jsonl(tmp_path / "a.jsonl", rows)}, "test_split": None,
                "columns": {"prompt": "question"}})
    assert sorted(out["train"]["prompt"]) == ["q0", "q1"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_local_parquet_and_csv_with_a_list_of_files_per_split(tmp_path, fmt):
    files = []
    for k in range(2):
        path = str(tmp_path / f"part{k}.{fmt}")
        getattr(datasets.Dataset.from_list(pairs(3, tag=f"f{k}-")), f"to_{fmt}")(path)
        files.append(path)
    out = load({"data_files": {"train": files}, "test_split": None})
    assert set(out) == {"train"}  # test_split: null -> no test split
    assert sorted(out["train"]["prompt"]) == sorted(f"f{k}-{i}" for k in range(2) for i in range(3))


@pytest.mark.slow
def test_weighted_mixture_counts_match_weights_and_train_is_shuffled(tmp_path):
    def spec(tag, n_train, n_test, weight):
        files = {"train": jsonl(tmp_path / f"{tag}.jsonl", pairs(n_train, tag)),
                 "test": jsonl(tmp_path / f"{tag}t.jsonl", pairs(n_test, tag))}
        return {"data_files": files, "weight": weight}

    a, b = spec("a", 20, 4, 0.5), spec("b", 10, 3, 0.3)
    out = load(a, b, seed=3)
    prompts = out["train"]["prompt"]
    assert sum(p.startswith("a") for p in prompts) == 10 and sum(p.startswith("b") for p in prompts) == 3
    assert len(out["test"]) == 7  # test splits are kept whole
    assert {p for p in prompts if p.startswith("a")} != {f"a{i}" for i in range(10)}  # a seeded share, not the head
    assert load(a, b, seed=3)["train"]["prompt"] == prompts  # reproducible with the seed
    whole = load(spec("a", 20, 1, 1.0), spec("b", 10, 1, 1.0))["train"]["prompt"]
    assert len(whole) == 30
    first_b = min(i for i, p in enumerate(whole) if p.startswith("b"))
    assert first_b < max(i for i, p in enumerate(whole) if p.startswith("a"))  # shuffled, not all of a then b


def test_weight_rounds_instead_of_truncating(tmp_path):
    # 0.29 * 100 = 28.999999999999996: int() would keep 28 rows
    out = load(train_only(tmp_path, pairs(100), weight=0.29))
    assert len(out["train"]) == 29


def test_hub_branch_on_a_local_folder_with_custom_split_names(tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    datasets.Dataset.from_list(pairs(5)).to_parquet(str(repo / "data" / "train_prefs-00000-of-00001.parquet"))
    datasets.Dataset.from_list(pairs(2, "t")).to_parquet(str(repo / "data" / "test_prefs-00000-of-00001.parquet"))
    out = load({"path": str(repo), "train_split": "train_prefs", "test_split": "test_prefs"})
    assert len(out["train"]) == 5 and sorted(out["test"]["prompt"]) == ["t0", "t1"]
    with pytest.raises(ValueError, match=r"split 'train'.*test_prefs.*train_prefs"):
        load({"path": str(repo)})


def test_paired_to_unpaired_counts_and_labels(tmp_path):
    files = {"train": jsonl(tmp_path / "a.jsonl", pairs(3)), "test": jsonl(tmp_path / "t.jsonl", pairs(2))}
    spec = {"data_files": files}
    out = load(spec, target="unpaired")
    assert out["train"].column_names == list(FORMATS["unpaired"])
    assert len(out["train"]) == 6 and len(out["test"]) == 4
    rows = {(r["prompt"], r["completion"]): r["label"] for r in out["train"]}
    assert rows == {**{(f"p{i}", f"good p{i}"): True for i in range(3)},
                    **{(f"p{i}", f"bad p{i}"): False for i in range(3)}}


def test_paired_or_unpaired_keeps_pairs_unless_unpair_or_mixed(tmp_path):
    paired = train_only(tmp_path, pairs(3))
    assert dataset_format(load(paired, target="paired_or_unpaired")["train"]) == "paired"
    assert len(load(paired, target="paired_or_unpaired", unpair=True)["train"]) == 6
    unpaired_rows = [{"prompt": "x", "completion": "y", "label": True},
                     {"prompt": "x", "completion": "z", "label": False}]
    unpaired = train_only(tmp_path, unpaired_rows, "u.jsonl")
    out = load(paired, unpaired, target="paired_or_unpaired")  # mixed: the common format is unpaired
    assert dataset_format(out["train"]) == "unpaired" and len(out["train"]) == 3 * 2 + 2


def test_to_sft_uses_chosen_or_positive_rows(tmp_path):
    out = load(train_only(tmp_path, pairs(3)), target="sft")
    assert out["train"].column_names == ["prompt", "completion"]
    assert sorted(out["train"]["completion"]) == ["good p0", "good p1", "good p2"]
    rows = [{"prompt": "x", "completion": f"c{i}", "label": i % 2 == 0} for i in range(5)]
    out = load(train_only(tmp_path, rows, "u.jsonl"), target="sft")
    assert sorted(out["train"]["completion"]) == ["c0", "c2", "c4"]


def test_unpaired_cannot_become_paired(tmp_path):
    rows = [{"prompt": "x", "completion": "y", "label": True}]
    with pytest.raises(ValueError, match="cannot be made paired"):
        load(train_only(tmp_path, rows, "u.jsonl"))


def test_binarize_sum_of_columns_at_train_median_also_cuts_test(tmp_path):
    train = [helpsteer("A", [4, 0, 0, 0, 0]),  # sum 4
             helpsteer("B", [0, 3, 3, 0, 0]),  # sum 6
             helpsteer("C", [3, 3, 3, 0, 0]),  # sum 9
             helpsteer("D", [1, 2, 2, 2, 3])]  # sum 10 -> median of sums 7.5 (helpfulness alone would pick A, C)
    test = [helpsteer("E", [0, 2, 2, 2, 2]),  # sum 8
            helpsteer("F", [1, 2, 2, 2, 2]),  # sum 9
            helpsteer("G", [6, 0, 0, 0, 0])]  # sum 6 -> its own median would be 8, which would make E negative
    spec = {
        "data_files": {"train": jsonl(tmp_path / "tr.jsonl", train), "test": jsonl(tmp_path / "te.jsonl", test)},
        "columns": {"completion": "response"},
        "binarize": {"score": ATTRS, "threshold": "median"},
    }
    out = load(spec, target="unpaired")
    assert {r["completion"]: r["label"] for r in out["train"]} == {"A": False, "B": False, "C": True, "D": True}
    assert {r["completion"]: r["label"] for r in out["test"]} == {"E": True, "F": True, "G": False}
    assert out["train"].features["label"] == datasets.Value("bool")


def test_binarize_single_column_fixed_threshold_replaces_label(tmp_path):
    rows = [{"prompt": "x", "completion": f"c{i}", "score": i, "label": "junk"} for i in range(4)]
    spec = {"data_files": {"train": jsonl(tmp_path / "a.jsonl", rows)}, "test_split": None,
            "binarize": {"score": "score", "threshold": 1}}
    out = load(spec, target="unpaired")
    assert {r["completion"]: r["label"] for r in out["train"]} == {"c0": False, "c1": False, "c2": True, "c3": True}


def test_conversational_values_are_kept_through_unpairing(tmp_path):
    rows = [{"prompt": conv([("user", f"hi {i}")]), "chosen": conv([("assistant", "good")]),
             "rejected": conv([("assistant", "bad")])} for i in range(2)]
    out = load(train_only(tmp_path, rows, "c.jsonl"), target="unpaired")
    row = next(r for r in out["train"] if not r["label"])
    assert row["prompt"][0]["role"] == "user" and row["completion"] == [{"role": "assistant", "content": "bad"}]


def test_implicit_prompt_is_extracted_from_whole_conversations(tmp_path):
    # ultrafeedback_binarized: plain `prompt`, but chosen/rejected repeat the user turn
    rows = [{"prompt": "sky?", "chosen": conv([("user", "sky?"), ("assistant", "blue")]),
             "rejected": conv([("user", "sky?"), ("assistant", "green")])}]
    out = load(train_only(tmp_path, rows, "u.jsonl"))
    assert out["train"][0] == {"prompt": conv([("user", "sky?")]), "chosen": conv([("assistant", "blue")]),
                               "rejected": conv([("assistant", "green")])}


def test_plain_and_conversational_datasets_do_not_mix(tmp_path):
    rows = [{"prompt": conv([("user", "hi")]), "chosen": conv([("assistant", "a")]),
             "rejected": conv([("assistant", "b")])}]
    a = train_only(tmp_path, rows, "c.jsonl")
    b = train_only(tmp_path, pairs(2), "p.jsonl")
    with pytest.raises(ValueError, match=r"plain-text and conversational.*c\.jsonl.*p\.jsonl"):
        load(a, b)
    rows[0]["chosen"], rows[0]["rejected"] = "a", "b"  # conversational prompt, plain answers: within one dataset
    with pytest.raises(ValueError, match=r"datasets\[0\] \(.*m\.jsonl\): text columns must be all plain"):
        load(train_only(tmp_path, rows, "m.jsonl"))


def test_missing_split_names_it_and_lists_available(tmp_path):
    spec = {"data_files": {"train_prefs": jsonl(tmp_path / "a.jsonl", pairs(2))}, "train_split": "train_prefs"}
    with pytest.raises(ValueError, match=r"split 'test' not found; available splits: \['train_prefs'\] \(test_split"):
        load(spec)
    with pytest.raises(ValueError, match=r"split 'train' not found; available splits: \['train_prefs'\]$"):
        load({**spec, "train_split": "train", "test_split": None})


def test_missing_column_names_column_dataset_split_and_present(tmp_path):
    rows = [{"prompt": "x", "chosen": "y", "other": "z"}]
    match = r"datasets\[0\] \(.*a\.jsonl\).*split 'train'.*'rejected'.*\['chosen', 'other', 'prompt'\]"
    with pytest.raises(ValueError, match=match):
        load(train_only(tmp_path, rows))
    with pytest.raises(ValueError, match=r"column 'question' \(mapped to 'prompt'\) not found"):
        load(train_only(tmp_path, rows, columns={"prompt": "question"}))


def test_empty_text_rows_dropped_and_logged_or_raised(tmp_path, caplog):
    rows = pairs(4)
    rows[1]["prompt"], rows[3]["chosen"] = "  ", ""
    spec = train_only(tmp_path, rows)
    with caplog.at_level(logging.WARNING, logger="aot_handbook.data"):
        out = load(spec)
    assert sorted(out["train"]["prompt"]) == ["p0", "p2"]
    assert "2 row(s) with empty text" in caplog.text
    with pytest.raises(ValueError, match=r"2 row\(s\) with empty text \(first: row 1, column 'prompt'\)"):
        load(spec, drop_empty=False)


def test_unpaired_classes_may_come_from_different_datasets(tmp_path):
    # docs/MATH.md sec. 2: positives and negatives are drawn independently, so the class check is on the mixture
    pos = [{"prompt": "x", "completion": f"good{i}", "label": True} for i in range(2)]
    neg = [{"prompt": "x", "completion": f"bad{i}", "label": 0} for i in range(3)]
    out = load(train_only(tmp_path, pos, "pos.jsonl"), train_only(tmp_path, neg, "neg.jsonl"), target="unpaired")
    assert sorted(out["train"]["label"]) == [False] * 3 + [True] * 2


def test_one_class_unpaired_train_names_the_dataset(tmp_path):
    rows = [{"prompt": "x", "completion": f"c{i}", "label": True} for i in range(3)]
    with pytest.raises(ValueError, match=r"only label=True.*only_pos\.jsonl"):
        load(train_only(tmp_path, rows, "only_pos.jsonl"), target="unpaired")


@pytest.mark.parametrize("labels, ok", [([0, 1, 1], True), ([True, False, True], True), (["yes", "no", "yes"], False),
                                        ([0, 2, 1], False), ([0.0, 1.0, 1.0], False), ([True, None, False], False)])
def test_labels_must_be_booleans_or_0_1(tmp_path, labels, ok):
    rows = [{"prompt": "x", "completion": f"c{i}", "label": lab} for i, lab in enumerate(labels)]
    spec = train_only(tmp_path, rows)
    if ok:
        out = load(spec, target="unpaired")
        assert out["train"].features["label"] == datasets.Value("bool")
        assert sorted(out["train"]["label"]) == sorted(bool(x) for x in labels)
    else:
        with pytest.raises(ValueError, match="column 'label' must hold booleans"):
            load(spec, target="unpaired")


@pytest.mark.parametrize("rows, match", [
    ([{"prompt": "x", "completion": "y", "other": 1}],
     r"score column 'score' is missing.*\['completion', 'other', 'prompt'\]"),
    ([{"prompt": "x", "completion": "y", "score": "high"}], r"score column 'score' is not numeric"),
    ([{"prompt": "x", "completion": "y", "score": 1}, {"prompt": "x", "completion": "z", "score": None}],
     r"missing values"),
    ([{"prompt": "x", "completion": "y", "score": 1.0}, {"prompt": "x", "completion": "z", "score": float("inf")},
      {"prompt": "x", "completion": "w", "score": 2.0}],  # inf > the median: silently positive (issue 30)
     r"binarize score column\(s\) \['score'\] must be finite numbers: row 1 is inf"),
])
def test_binarize_score_column_errors(tmp_path, rows, match):
    spec = train_only(tmp_path, rows, binarize={"score": "score"})
    with pytest.raises(ValueError, match=match):
        load(spec, target="unpaired")


def test_from_dict_defaults(tmp_path):
    m = mixture({"data_files": {"train": jsonl(tmp_path / "a.jsonl", pairs(1))}})
    assert m.seed == 0 and m.unpair is False and m.drop_empty is True
    assert m.datasets[0] == DatasetSpec(data_files={"train": str(tmp_path / "a.jsonl")})
    assert m.datasets[0].train_split == "train" and m.datasets[0].test_split == "test" and m.datasets[0].weight == 1.0


@pytest.mark.parametrize("block, match", [
    ({"datasets": [{"path": "x"}], "shuffle": True}, r"unknown key 'dataset_mixture\.shuffle'"),
    ({"datasets": [{"path": "x", "split": "train"}]}, r"unknown key 'dataset_mixture\.datasets\[0\]\.split'"),
    ({"datasets": [{"path": "x", "weight": "half"}]},
     r"'dataset_mixture\.datasets\[0\]\.weight' must be int or float"),
    ({"datasets": [{"path": "x", "weight": True}]}, r"\.weight' must be"),
    ({"datasets": [{"path": "x"}], "seed": "0"}, r"'dataset_mixture\.seed' must be int"),
    ({"datasets": [{"path": "x", "train_split": None}]}, r"\.train_split' must be str"),
    ({"datasets": [{"path": "x"}, {"path": "y", "weight": 0}]},
     r"'dataset_mixture\.datasets\[1\]\.weight' must be in \(0, 1\]"),
    ({"datasets": [{"path": "x", "weight": 1.5}]}, r"\.weight' must be in \(0, 1\]"),
    ({"datasets": [{"name": "default"}]}, r"'dataset_mixture\.datasets\[0\]' needs 'path'.*or 'data_files'"),
    ({"datasets": []}, r"'dataset_mixture\.datasets' must list"),
    ({"datasets": [{"path": "x", "columns": {"prompt": 3}}]}, r"\.columns' must map"),
    ({"datasets": [{"path": "x", "binarize": {"score": "s", "cut": 1}}]}, r"\.binarize' takes 'score'"),
    ({"datasets": [{"path": "x", "binarize": {"score": 3}}]}, r"\.binarize' takes 'score'"),
    ({"datasets": [{"path": "x", "binarize": {"threshold": 1}}]}, r"\.binarize' takes 'score'"),
    ({"datasets": [{"path": "x", "binarize": {"score": "s", "threshold": "mean"}}]},
     r"\.binarize\.threshold' must be"),
])
def test_from_dict_rejects_bad_keys_naming_key_and_source(block, match):
    with pytest.raises(ValueError, match=match) as e:
        DatasetMixture.from_dict(block, source=SRC)
    assert str(e.value).startswith(SRC)


def test_from_dict_rejects_bad_files(tmp_path):
    txt = tmp_path / "train.txt"
    txt.write_text("hello\n")
    match = r"^recipes/test\.yaml: .*data_files\.train.*unknown file extension: '.*train\.txt'"
    with pytest.raises(ValueError, match=match):
        mixture({"data_files": {"train": str(txt)}})
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match=rf"data_files\.test_prefs' has no such file: '{missing}'"):
        mixture({"data_files": {"train": jsonl(tmp_path / "a.jsonl", pairs(1)), "test_prefs": missing}})
    # with `path`, data_files name files inside that repo or folder: not checked against the working directory
    assert mixture({"path": "org/repo", "data_files": {"train": "data/x.txt"}}).datasets[0].path == "org/repo"


def test_recipe_dict_is_not_mutated(tmp_path):
    block = {"datasets": [{"path": "x", "binarize": {"score": "s"}}]}
    assert mixture(*block["datasets"]).datasets[0].binarize == {"score": "s", "threshold": "median"}
    assert block["datasets"][0]["binarize"] == {"score": "s"}


def test_unknown_target_and_unpair_with_paired_target(tmp_path):
    m = mixture(train_only(tmp_path, pairs(2)), unpair=True)
    with pytest.raises(ValueError, match="target must be one of"):
        load_mixture(m, target="kto")
    with pytest.raises(ValueError, match="unpair is true"):
        load_mixture(m, target="paired")


def test_conversational_wraps_plain_text_as_turns(tmp_path):
    """Plain-text data (HelpSteer, BeaverTails) becomes user/assistant turns, so the chat template applies."""
    import json as _json

    from aot_handbook.data import DatasetMixture, load_mixture

    path = tmp_path / "u.jsonl"
    path.write_text("\n".join(_json.dumps({"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0})
                              for i in range(4)))
    mixture = DatasetMixture.from_dict(
        {"datasets": [{"data_files": {"train": str(path)}, "test_split": None, "conversational": True}]},
        source="r.yaml")
    row = load_mixture(mixture, target="unpaired")["train"][0]
    assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]
    assert row["completion"][0]["role"] == "assistant" and row["completion"][0]["content"].startswith("a")
    assert row["prompt"][0]["content"][1:] == row["completion"][0]["content"][1:]  # q<i> pairs with a<i>


def test_a_typo_on_our_side_of_columns_is_an_error(tmp_path):
    rows = [{"question": f"q{i}", "chosen": f"q{i} yes", "rejected": f"q{i} no"} for i in range(2)]
    with pytest.raises(ValueError, match=r"\.columns' maps their column 'question' to 'promt', which is none of ours"):
        load(train_only(tmp_path, rows, columns={"promt": "question"}))


def test_the_prompt_is_inferred_from_chosen_and_rejected_only_when_asked(tmp_path):
    rows = [{"chosen": f"{i}+1={i + 1}", "rejected": f"{i}+1={i + 2}"} for i in range(2)]
    with pytest.raises(ValueError, match=r"column 'prompt' missing for paired data.*or set infer_prompt: true"):
        load(train_only(tmp_path, rows))
    out = load(train_only(tmp_path, rows, infer_prompt=True))
    assert sorted(out["train"]["prompt"]) == ["0+1=", "1+1="] and sorted(out["train"]["chosen"]) == ["1", "2"]


@pytest.mark.slow
def test_pairs_with_chosen_equal_to_rejected_are_dropped_or_refused(tmp_path, caplog):
    rows = pairs(3)
    rows[1]["rejected"] = rows[1]["chosen"]
    with caplog.at_level(logging.WARNING, logger="aot_handbook.data"):
        out = load(train_only(tmp_path, rows))
    assert sorted(out["train"]["prompt"]) == ["p0", "p2"]
    assert "1 row(s) with chosen == rejected; dropped" in caplog.text
    same = [{"prompt": f"p{i}", "chosen": "x", "rejected": "x"} for i in range(3)]
    with pytest.raises(ValueError, match=r"a\.jsonl\), split 'train': chosen equals rejected in every row \(3\)"):
        load(train_only(tmp_path, same))


def test_text_columns_read_as_text_whatever_the_file_infers(tmp_path):
    path = tmp_path / "digits.csv"
    path.write_text("prompt,chosen,rejected\n1+1=,02,3\n2+2=,4,5\n")
    out = load({"data_files": {"train": str(path)}, "test_split": None})
    assert sorted(out["train"]["chosen"]) == ["02", "4"]  # not 2 and 4, and no TypeError
    rows = [{"prompt": "1+1=", "chosen": 2, "rejected": 3}, {"prompt": "2+2=", "chosen": 4, "rejected": 5}]
    assert sorted(load(train_only(tmp_path, rows))["train"]["rejected"]) == ["3", "5"]


def test_a_bad_jsonl_line_is_named_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pairs(3)) + '{"prompt": "p", "chosen": "a",, }\n')
    with pytest.raises(ValueError, match=rf"{path}, line 4: not valid JSON"):
        load({"data_files": {"train": str(path)}, "test_split": None})


def test_data_errors_name_the_file_of_the_split_at_fault(tmp_path):
    test = jsonl(tmp_path / "test.jsonl", pairs(2))
    train = jsonl(tmp_path / "train.jsonl", [{"prompt": "x", "chosen": "y"}])  # no rejected
    spec = {"data_files": {"test": test, "train": train}}  # the test file listed first
    with pytest.raises(ValueError, match=r"\(.*train\.jsonl\), split 'train': column 'rejected' missing") as err:
        load(spec)
    assert "test.jsonl" not in str(err.value)


def test_an_empty_data_file_is_named(tmp_path):
    """An empty JSONL file (e.g. a data stage that made no pairs) is an error naming the file and split, not
    the StopIteration that datasets raises on it."""
    from aot_handbook.data import DatasetMixture

    empty = tmp_path / "paired.jsonl"
    empty.write_text("")
    m = DatasetMixture.from_dict({"datasets": [{"data_files": {"train": str(empty)}, "test_split": None}]},
                                 source="r.yaml")
    with pytest.raises(ValueError, match=r"split 'train': the data file\(s\) \[.*paired.jsonl'\] are empty"):
        load_mixture(m, target="paired")


def test_attribute_labels_follow_direction_and_cut(tmp_path):
    train, test = helpsteer_rows(40, 0), helpsteer_rows(12, 1)
    files = {"train": write_jsonl_rows(tmp_path / "train.jsonl", train),
             "test": write_jsonl_rows(tmp_path / "test.jsonl", test)}
    attributes = {"helpfulness": {}, "verbosity": {"direction": "lower"},
                  "correctness": {"threshold": 2}, "complexity": {"score": "coherence", "direction": "lower",
                                                                   "threshold": 3}}
    data = load_attribute_mixture(attribute_mixture(files, attributes, columns={"completion": "response"}))
    med = {a: float(np.median([r[a] for r in train])) for a in HS}
    for split, rows in (("train", train), ("test", test)):  # test labels use the train split's cuts
        got = {r["completion"]: r for r in data[split]}
        for row in rows:
            g = got[row["response"]]
            assert g["label_helpfulness"] == (row["helpfulness"] > med["helpfulness"])
            assert g["label_verbosity"] == (row["verbosity"] < med["verbosity"])
            assert g["label_correctness"] == (row["correctness"] > 2)
            assert g["label_complexity"] == (row["coherence"] < 3)
            votes = [g[f"label_{a}"] for a in attributes]
            assert g["label"] == (sum(votes) > len(votes) / 2)  # no label column: the majority


def test_nested_flags_are_read_from_the_struct(tmp_path):
    rows = [{"prompt": f"{i}+1=", "response": f"{i:03d}", "is_safe": i % 3 != 0,
             "category": {theirs: i % 3 == 0 and (i + j) % 2 == 0 for j, theirs in enumerate(BT.values())}}
            for i in range(12)]
    rows[0]["category"] = dict.fromkeys(BT.values(), True)
    files = {"train": write_jsonl_rows(tmp_path / "bt.jsonl", rows)}
    attributes = {ours: {"score": f"category.{theirs}", "direction": "lower", "threshold": 0.5}
                  for ours, theirs in BT.items()}
    data = load_attribute_mixture(attribute_mixture(files, attributes,
                                                    columns={"completion": "response", "label": "is_safe"},
                          test_split=None))
    got = {r["completion"]: r for r in data["train"]}
    for row in rows:
        g = got[row["response"]]
        assert g["label"] == row["is_safe"]
        assert all(g[f"label_{ours}"] == (not row["category"][theirs]) for ours, theirs in BT.items())


@pytest.mark.parametrize("attributes,rows_edit,message", [
    ({"helpfulness": {}, "honesty": {}}, None, "attribute 'honesty': score column 'honesty' is missing"),
    ({"helpfulness": {}}, lambda r: {**r, "helpfulness": "high"}, "score column 'helpfulness' is not numeric"),
    ({"helpfulness": {}, "verbosity": {"threshold": 10}}, None,
     "attribute 'verbosity': every answer is negative \\(column 'verbosity'"),
    ({"helpfulness": {"direction": "up"}}, None, "helpfulness.direction' must be one of"),
    ({"helpfulness": {"scor": "x"}}, None, "takes 'score'"),
])
def test_bad_attributes_name_the_column(tmp_path, attributes, rows_edit, message):
    rows = helpsteer_rows(16, 2)
    rows = [rows_edit(r) for r in rows] if rows_edit else rows
    files = {"train": write_jsonl_rows(tmp_path / "train.jsonl", rows)}
    with pytest.raises(ValueError, match=message):
        load_attribute_mixture(attribute_mixture(files, attributes, columns={"completion": "response"},
                                                 test_split=None))
