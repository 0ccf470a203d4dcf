"""A recipe's `dataset_mixture` block -> train/test `datasets.Dataset`s in the format a method needs.

Formats use TRL's column names (FORMATS): paired for DPO, IPO and AOT paired; unpaired for KTO and AOT
unpaired (docs/MATH.md sec. 2); sft. Values stay plain strings or conversational {role, content} lists, as TRL
takes them: the trainers apply chat templates. Keys of one dataset entry (defaults as in DatasetSpec):

    path: HuggingFaceH4/ultrafeedback_binarized  # hub id or folder for load_dataset; or omit, give data_files
    data_files: {train_prefs: data/train.jsonl}  # split -> file(s), .json .jsonl .parquet .csv (relative to cwd)
    name, revision, train_split, test_split       # test_split: null = this dataset has none
    weight: 0.5                                   # share (0, 1] of the train split kept, after a seeded shuffle
    columns: {prompt: question}                   # OUR column name <- THEIR column name
    infer_prompt: false                           # paired data without a prompt column: true = take the
                                                  # common prefix of chosen and rejected as the prompt (TRL)
    binarize: {score: [helpfulness, coherence], threshold: median}  # label = sum of scores > threshold
    attributes: {helpfulness: {}, verbosity: {direction: lower}}   # one label per attribute (label_<name>),
                                                  # for method aot_multi; see parse_attributes
"""

from __future__ import annotations

import glob
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from trl.data_utils import maybe_extract_prompt, unpair_preference_dataset

logger = logging.getLogger(__name__)

FORMATS = {
    "paired": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "sft": ("prompt", "completion"),
}
TARGETS = ("paired", "unpaired", "paired_or_unpaired", "sft")
TEXT_COLUMNS = ("prompt", "chosen", "rejected", "completion")
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
NONE = type(None)


def score_threshold(train_scores, threshold: float | str = "median") -> float:
    """The cut for `binarize`: a number, or "median" of the train split's scores. The paper binarizes
    HelpSteer and BeaverTails at the median of the summed attribute scores (docs/MATH.md sec. 2)."""
    return float(np.median(np.asarray(train_scores, dtype=float))) if threshold == "median" else float(threshold)


def binarize(scores, threshold: float | str = "median") -> list[bool]:
    """label = score > threshold; at the median, ties go negative."""
    cut = score_threshold(scores, threshold)
    return [bool(s > cut) for s in np.asarray(scores, dtype=float)]


def _check_keys(d: Any, where: str, source: str, types: dict) -> dict:
    """Unknown keys and wrong types, named by their recipe path (a bool is not accepted as a number)."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: '{where}' must be a mapping, got {type(d).__name__}")
    for key, value in d.items():
        if key not in types:
            raise ValueError(f"{source}: unknown key '{where}.{key}' (known: {sorted(types)})")
        ok = types[key] if isinstance(types[key], tuple) else (types[key],)
        if not isinstance(value, ok) or (isinstance(value, bool) and bool not in ok):
            names = " or ".join("null" if t is NONE else t.__name__ for t in ok)
            raise ValueError(f"{source}: '{where}.{key}' must be {names}, got {value!r}")
    return d


def _as_list(files: str | list[str]) -> list[str]:
    return [files] if isinstance(files, str) else files


@dataclass
class DatasetSpec:
    """One entry of `dataset_mixture.datasets` (see the module docstring)."""

    path: str | None = None
    name: str | None = None
    revision: str | None = None
    data_files: dict[str, str | list[str]] | None = None
    train_split: str = "train"
    test_split: str | None = "test"
    weight: float = 1.0
    columns: dict[str, str] | None = None
    binarize: dict[str, Any] | None = None
    conversational: bool = False  # wrap plain text as user/assistant turns, so the chat template applies
    infer_prompt: bool = False  # no prompt column: the common prefix of chosen and rejected is the prompt
    attributes: dict[str, dict] | None = None  # multi-attribute labels (parse_attributes)

    @property
    def title(self) -> str:
        return self.path or _as_list(next(iter(self.data_files.values())))[0]

    @classmethod
    def from_dict(cls, d: dict, *, source: str, where: str = "dataset_mixture.datasets[0]",
                  pending: tuple[Path, ...] = ()) -> DatasetSpec:
        """``pending``: folders a required stage writes before this data is read (e.g. a ``make pairs`` recipe in
        ``requires``): files inside them need not exist yet."""
        opt = lambda t: (t, NONE)  # noqa: E731
        types = {"path": opt(str), "name": opt(str), "revision": opt(str), "data_files": opt(dict),
                 "train_split": str, "test_split": opt(str), "weight": (int, float), "columns": opt(dict),
                 "binarize": opt(dict), "conversational": bool, "infer_prompt": bool, "attributes": opt(dict)}
        spec = cls(**_check_keys(d, where, source, types))
        bad = lambda key, why: ValueError(f"{source}: '{where}{key}' {why}")  # noqa: E731
        if not 0 < spec.weight <= 1:
            raise bad(".weight", f"must be in (0, 1], got {spec.weight}")
        if spec.path is None and not spec.data_files:
            raise bad("", "needs 'path' (hub id or folder) or 'data_files'")
        for split, files in (spec.data_files or {}).items():
            if not isinstance(files, (str, list)) or not files or not all(isinstance(f, str) for f in _as_list(files)):
                raise bad(f".data_files.{split}", f"must be a file or a list of files, got {files!r}")
            for f in _as_list(files) if spec.path is None else []:  # with a path, files live in that repo
                if Path(f).suffix.lower() not in BUILDERS:
                    raise bad(f".data_files.{split}", f"has an unknown file extension: '{f}' ({sorted(BUILDERS)})")
                later = any(folder in Path(f).resolve().parents for folder in pending)
                if not glob.glob(f) and not later:
                    raise bad(f".data_files.{split}", f"has no such file: '{f}'")
        if spec.path is None and len({BUILDERS[Path(f).suffix.lower()] for f in _spec_files(spec)}) > 1:
            raise bad(".data_files", "mixes file formats; use one dataset entry per format")
        if spec.columns is not None and not all(isinstance(c, str) for kv in spec.columns.items() for c in kv):
            raise bad(".columns", f"must map our column names to theirs (strings), got {spec.columns!r}")
        if spec.binarize is not None:
            score = spec.binarize.get("score")
            if set(spec.binarize) - {"score", "threshold"} or not score or not isinstance(score, (str, list)) \
                    or not all(isinstance(s, str) for s in _as_list(score)):
                raise bad(".binarize", f"takes 'score' (a column or a list of columns summed) and 'threshold' "
                          f"(\"median\" or a number), got {spec.binarize!r}")
            spec.binarize = {"threshold": "median", **spec.binarize}  # a copy: the recipe dict stays as written
            t = spec.binarize["threshold"]
            if t != "median" and (isinstance(t, bool) or not isinstance(t, (int, float))):
                raise bad(".binarize.threshold", f"must be \"median\" or a number, got {t!r}")
        ours = {c for cols in FORMATS.values() for c in cols} | set(_as_list((spec.binarize or {}).get("score", [])))
        if spec.attributes is not None:
            spec.attributes = parse_attributes(spec.attributes, f"{source}: {where}.attributes")
            ours |= {a["score"] for a in spec.attributes.values()}
        for name in spec.columns or {}:  # a typo on our side would silently drop their column
            if name not in ours:
                raise bad(".columns", f"maps their column '{spec.columns[name]}' to '{name}', which is none of ours "
                                      f"({sorted(ours)}); the mapping is `our_name: their_name`")
        return spec


def _spec_files(spec: DatasetSpec) -> list[str]:
    return [f for files in spec.data_files.values() for f in _as_list(files)]


def _split_title(spec: DatasetSpec, split: str) -> str:
    """The files of one split (what a message about that split names), else the dataset's title."""
    files = (spec.data_files or {}).get(split)
    return ", ".join(_as_list(files)) if files and spec.path is None else spec.title


def _bad_json_line(files: list[str]) -> str | None:
    """The first line of a JSON Lines file that does not parse: 'file, line N: why' (datasets names neither)."""
    for name in files:
        for path in sorted(glob.glob(name)):
            if Path(path).suffix.lower() == ".json":
                try:
                    json.loads(Path(path).read_text(encoding="utf-8"))
                    continue
                except ValueError:
                    pass  # not one JSON document: datasets reads it as JSON Lines, so check its lines
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    try:
                        if line.strip():
                            json.loads(line)
                    except ValueError as err:
                        return f"{path}, line {number}: not valid JSON ({err})"
    return None


@dataclass
class DatasetMixture:
    """The `dataset_mixture` block: datasets concatenated (each cut to its weight), train shuffled with `seed`.
    `unpair`: paired rows -> one positive and one negative row each. `drop_empty`: false = raise on empty text."""

    datasets: list[DatasetSpec] = field(default_factory=list)
    unpair: bool = False
    drop_empty: bool = True
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict, *, source: str, pending: tuple[Path, ...] = ()) -> DatasetMixture:
        types = {"datasets": list, "unpair": bool, "drop_empty": bool, "seed": int}
        d = _check_keys(d, "dataset_mixture", source, types)
        if not d.get("datasets"):
            raise ValueError(f"{source}: 'dataset_mixture.datasets' must list at least one dataset")
        specs = [DatasetSpec.from_dict(s, source=source, where=f"dataset_mixture.datasets[{i}]", pending=pending)
                 for i, s in enumerate(d["datasets"])]
        return cls(**{**d, "datasets": specs})


def _load_split(spec: DatasetSpec, split: str, where: str) -> datasets.Dataset:
    if spec.path is None:  # local files: the builder follows the extension; only this split's files are read
        available = list(spec.data_files)
    else:  # hub id or local folder: real hub code, offline-testable on a folder
        available = datasets.get_dataset_split_names(spec.path, spec.name, revision=spec.revision,
                                                     data_files=spec.data_files)
    if split not in available:
        hint = " (test_split: null if this dataset has none)" if split == spec.test_split else ""
        raise ValueError(f"{where}: split '{split}' not found; available splits: {sorted(available)}{hint}")
    if spec.path is None:
        builder = BUILDERS[Path(_spec_files(spec)[0]).suffix.lower()]
        kwargs = {}
        if builder == "csv":  # text stays text: '007' or '42' must not become a number
            kwargs["converters"] = {theirs: str for theirs in _their_text_columns(spec)}
        files = [f for pattern in _as_list(spec.data_files[split]) for f in sorted(glob.glob(pattern))]
        if files and all(Path(f).stat().st_size == 0 for f in files):  # datasets would fail with StopIteration
            raise ValueError(f"{where}: split '{split}': the data file(s) {files} are empty (no rows)")
        try:
            return datasets.load_dataset(builder, data_files={split: spec.data_files[split]}, split=split, **kwargs)
        except Exception as err:
            culprit = _bad_json_line(_as_list(spec.data_files[split])) if builder == "json" else None
            if culprit or isinstance(err, datasets.exceptions.DatasetGenerationError):
                raise ValueError(f"{where}: {culprit or f'cannot read split {split!r}: {err.__cause__ or err}'}") \
                    from err
            raise
    return datasets.load_dataset(spec.path, spec.name, revision=spec.revision, data_files=spec.data_files, split=split)


def _their_text_columns(spec: DatasetSpec) -> list[str]:
    mapping = spec.columns or {}
    return [mapping.get(c, c) for c in TEXT_COLUMNS]


def _text_as_text(ds: datasets.Dataset, at: str) -> datasets.Dataset:
    """A text column the file's type inference read as numbers (JSON 42, CSV from a hub folder) becomes text."""
    for c in TEXT_COLUMNS:
        feature = ds.features.get(c)
        if isinstance(feature, datasets.Value) and feature.dtype not in ("string", "large_string"):
            if feature.dtype != "null":
                logger.warning("%s: column '%s' was read as %s; using it as text", at, c, feature.dtype)
            ds = ds.cast_column(c, datasets.Value("string"))
    return ds


def _is_conversational(feature) -> bool | None:
    """From the Arrow schema, so every row is covered: plain text (False), {role, content} lists (True), else None."""
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return False
    inner = getattr(feature, "feature", None)
    if isinstance(feature, (datasets.List, datasets.LargeList)) and isinstance(inner, dict):
        return {"role", "content"} <= set(inner) or None
    return None


def _is_empty(value) -> bool:
    if value is None or isinstance(value, str):
        return not (value or "").strip()
    return not any(str(m.get("content") or "").strip() for m in value)


def _rename_and_binarize(ds: datasets.Dataset, spec: DatasetSpec, cut: float | None, at: str):
    mapping, present = spec.columns or {}, f"columns present: {sorted(ds.column_names)}"
    for ours, theirs in mapping.items():
        if theirs not in ds.column_names:
            raise ValueError(f"{at}: column '{theirs}' (mapped to '{ours}') not found; {present}")
    ds = ds.remove_columns([c for c in mapping if c in ds.column_names and c not in mapping.values()])
    ds = _text_as_text(ds.rename_columns({theirs: ours for ours, theirs in mapping.items() if theirs != ours}), at)
    if not spec.binarize:
        return ds, cut
    cols = _as_list(spec.binarize["score"])
    for c in cols:
        if not getattr(ds.features.get(c), "dtype", "").startswith(("int", "uint", "float", "double")):
            what = f"not numeric ({ds.features[c]})" if c in ds.column_names else "missing"
            raise ValueError(f"{at}: binarize score column '{c}' is {what}; {present}")
    scores = np.sum([np.array(list(ds[c]), dtype=float) for c in cols], axis=0)  # None -> nan
    if np.isnan(scores).any():
        raise ValueError(f"{at}: binarize score column(s) {cols} have missing values")
    if not np.isfinite(scores).all():  # inf > any median: labelled positive without a word
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"{at}: binarize score column(s) {cols} must be finite numbers: row {bad} is "
                         f"{scores[bad]} ({int((~np.isfinite(scores)).sum())} non-finite in all)")
    cut = score_threshold(scores, spec.binarize["threshold"]) if cut is None else cut  # test uses train's cut
    ds = ds.remove_columns([c for c in ["label"] if c in ds.column_names])
    return ds.add_column("label", binarize(scores, cut)), cut


def _as_turns(row: dict) -> dict:
    """Plain prompt/answer text (HelpSteer, BeaverTails) as one user turn and one assistant turn."""
    turn = lambda role, text: [{"role": role, "content": text}]  # noqa: E731
    return {c: turn("user" if c == "prompt" else "assistant", row[c]) if isinstance(row[c], str) else row[c]
            for c in ("prompt", "chosen", "rejected", "completion") if c in row}


def _to_own_format(ds: datasets.Dataset, target: str, drop_empty: bool, at: str,
                   conversational: bool = False, infer_prompt: bool = False,
                   keep: tuple[str, ...] = ()) -> tuple[datasets.Dataset, str]:
    """Check the columns, keep only those of the data's own format, validate labels and text."""
    cols = set(ds.column_names)
    if target == "paired" and "label" in cols and not {"chosen", "rejected"} <= cols:
        raise ValueError(f"{at}: unpaired data (one completion with a label) cannot be made paired: a pair needs two "
                         "responses to the same prompt. Use aot_unpaired or kto.")
    kind = ("paired" if target == "paired" or {"chosen", "rejected"} <= cols
            else "unpaired" if target != "sft" or "label" in cols else "sft")
    for c in FORMATS[kind]:  # a paired prompt may be implicit in chosen/rejected, if the recipe says so
        if c not in cols and not (kind == "paired" and c == "prompt" and infer_prompt):
            hint = " or set infer_prompt: true" if kind == "paired" and c == "prompt" else ""
            raise ValueError(f"{at}: column '{c}' missing for {kind} data; columns present: {sorted(cols)} "
                             f"(map names with `columns:`{hint})")
    if kind == "paired" and ("prompt" not in cols or (_is_conversational(ds.features["chosen"])
                                                      and not _is_conversational(ds.features["prompt"]))):
        # the prompt is implicit, e.g. ultrafeedback_binarized: a plain prompt column, but chosen/rejected are
        # whole conversations that start with the user turn; TRL splits off their common prefix as the prompt
        ds = ds.map(maybe_extract_prompt, remove_columns=[c for c in ["prompt"] if c in cols])
    ds = ds.select_columns(list(FORMATS[kind]) + list(keep))  # keep: the attribute labels (method aot_multi)
    if conversational and not _is_conversational(ds.features["prompt"]):
        ds = ds.map(_as_turns)
    if kind == "unpaired":
        feature, values = ds.features["label"], set(ds["label"])
        if getattr(feature, "dtype", "").startswith(("int", "uint")) and values <= {0, 1}:
            ds = ds.cast_column("label", datasets.Value("bool"))
        elif getattr(feature, "dtype", None) != "bool" or None in values:
            raise ValueError(f"{at}: column 'label' must hold booleans or 0/1, got {feature} with values "
                             f"{sorted(map(repr, values))[:5]}")
    text = [c for c in TEXT_COLUMNS if c in ds.column_names]
    kept = ds.filter(lambda *values: not any(map(_is_empty, values)), input_columns=text)
    if len(kept) < len(ds):
        row, col = next((i, c) for i, r in enumerate(ds) for c in text if _is_empty(r[c]))
        msg = f"{at}: {len(ds) - len(kept)} row(s) with empty text (first: row {row}, column '{col}')"
        if not drop_empty:
            raise ValueError(msg + "; drop_empty is false")
        logger.warning(msg + "; dropped")
    if kind == "paired":  # a pair with the same answer twice teaches nothing and reads as a tie
        distinct = kept.filter(lambda chosen, rejected: chosen != rejected, input_columns=["chosen", "rejected"])
        if len(distinct) == 0:
            raise ValueError(f"{at}: chosen equals rejected in every row ({len(kept)}): no preference to learn; "
                             "are the columns mapped right?")
        if len(distinct) < len(kept):
            logger.warning("%s: %d row(s) with chosen == rejected; dropped", at, len(kept) - len(distinct))
        kept = distinct
    return kept, kind


def _convert(ds: datasets.Dataset, kind: str, final: str) -> datasets.Dataset:
    if kind == final:
        return ds
    if final == "unpaired":  # each pair -> (prompt, chosen, True) + (prompt, rejected, False)
        return unpair_preference_dataset(ds).select_columns(list(FORMATS["unpaired"]))
    if kind == "paired":  # sft on the preferred answers
        return ds.select_columns(["prompt", "chosen"]).rename_column("chosen", "completion")
    return ds.filter(lambda label: label, input_columns="label").remove_columns("label")


def _concatenate(group: list[tuple[str, datasets.Dataset]]) -> datasets.Dataset:
    """All plain text or all conversational (TRL formats a batch one way), then concatenate."""
    styles = {}
    for where, ds in group:
        style = {_is_conversational(ds.features[c]) for c in TEXT_COLUMNS if c in ds.column_names}
        if None in style or len(style) > 1:
            raise ValueError(f"{where}: text columns must be all plain strings or all conversational "
                             f"(lists of {{role, content}}); got {ds.features}")
        styles[where] = "conversational" if True in style else "plain"
    if len(set(styles.values())) > 1:
        raise ValueError(f"dataset_mixture mixes plain-text and conversational datasets: {styles}")
    features = group[0][1].features  # string vs large_string, message key order: align before concatenating
    return datasets.concatenate_datasets([ds if ds.features == features else ds.cast(features) for _, ds in group])


def load_mixture(mixture: DatasetMixture, *, target: str) -> datasets.DatasetDict:
    """Load every dataset, bring it to `target`'s format and concatenate: keys `train` and, if any dataset
    has a test split, `test`. "paired_or_unpaired" keeps paired data paired (AOT unpaired then ignores the
    pairing, docs/MATH.md sec. 2) unless `unpair: true` or the mixture also holds unpaired data."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if mixture.unpair and target == "paired":
        raise ValueError("dataset_mixture.unpair is true but this method needs paired data")
    parts = []  # (where, "train" or "test", dataset, its own format)
    for i, spec in enumerate(mixture.datasets):
        where, cut, cuts = f"dataset_mixture.datasets[{i}] ({spec.title})", None, None
        for key, split in (("train", spec.train_split), ("test", spec.test_split)):
            if split is not None:  # train comes first, so its score cut is reused for test
                at = f"dataset_mixture.datasets[{i}] ({_split_title(spec, split)}), split '{split}'"
                ds, cut = _rename_and_binarize(_load_split(spec, split, at), spec, cut, at)
                keep = ()
                if spec.attributes:  # one label per attribute; train's cuts reused for test
                    ds, cuts = attribute_labels(ds, spec.attributes, cuts, at)
                    keep = tuple(attribute_columns(spec.attributes))
                ds, kind = _to_own_format(ds, target, mixture.drop_empty, at, spec.conversational, spec.infer_prompt,
                                          keep)
                if key == "train" and spec.weight < 1:  # round, not int(): 0.29 * 100 = 28.999...
                    ds = ds.shuffle(seed=mixture.seed).select(range(round(spec.weight * len(ds))))
                parts.append((where, key, ds, kind))
    kinds = {kind for *_, kind in parts}
    final = target if target != "paired_or_unpaired" else (
        "paired" if kinds == {"paired"} and not mixture.unpair else "unpaired")
    out = datasets.DatasetDict()
    for key in ("train", "test"):
        group = [(where, _convert(ds, kind, final)) for where, k, ds, kind in parts if k == key]
        if group:
            out[key] = _concatenate(group)
    names = ", ".join(dict.fromkeys(where for where, *_ in parts))
    if len(out["train"]) == 0:
        raise ValueError(f"dataset_mixture: the train split is empty ({names})")
    if final == "unpaired" and len(set(out["train"]["label"])) < 2:
        # checked on the mixture: positives and negatives may come from different datasets (docs/MATH.md sec. 2)
        raise ValueError(f"dataset_mixture: unpaired train data has only label={out['train'][0]['label']} rows "
                         f"({names}); AOT unpaired needs positives and negatives")
    out["train"] = out["train"].shuffle(seed=mixture.seed)
    logger.info("dataset_mixture -> %s data: %s", final, {k: len(v) for k, v in out.items()})
    return out


# ---------------------------------------------------------------- one label per attribute (method aot_multi)
# docs/MULTI_REWARD.md: each answer is labelled on every attribute its dataset entry lists; the multi-attribute
# trainer (trainers.multi) partitions each batch once per attribute.


LABEL_PREFIX = "label_"  # training rows carry one bool column per attribute: label_<attribute>
DIRECTIONS = ("higher", "lower")


def parse_attributes(block, where: str) -> dict[str, dict]:
    """A dataset entry's ``attributes`` block -> {name: {score, direction, threshold}} (errors name the key).

        attributes:
          helpfulness: {}                                   # score column = the name, higher is better, median
          verbosity: {direction: lower}                     # lower is better
          animal_abuse: {score: category.animal_abuse, direction: lower, threshold: 0.5}  # a nested flag
    """
    if not isinstance(block, dict) or not block:
        raise ValueError(f"'{where}' must map attribute names to {{score, direction, threshold}}, got {block!r}")
    out = {}
    for name, spec in block.items():
        at = f"{where}.{name}"
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"'{where}': attribute name {name!r} must be an identifier (it names a column)")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict) or set(spec) - {"score", "direction", "threshold"}:
            raise ValueError(f"'{at}' takes 'score' (a column), 'direction' (higher or lower) and 'threshold' "
                             f"(\"median\" or a number), got {spec!r}")
        spec = {"score": name, "direction": "higher", "threshold": "median", **spec}
        if not isinstance(spec["score"], str):
            raise ValueError(f"'{at}.score' must be a column name, got {spec['score']!r}")
        if spec["direction"] not in DIRECTIONS:
            raise ValueError(f"'{at}.direction' must be one of {DIRECTIONS}, got {spec['direction']!r}")
        t = spec["threshold"]
        if t != "median" and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
            raise ValueError(f"'{at}.threshold' must be \"median\" or a number, got {t!r}")
        out[name] = spec
    return out


def attribute_labels(ds, attributes: dict[str, dict], cuts: dict | None, at: str):
    """Add one bool column ``label_<name>`` per attribute; returns ``(ds, cuts)``.

    The aggregate ``label`` (what the batch sampler balances) is the data's own (a ``label`` column or
    the ``binarize`` block), else the majority vote of the attribute labels (ties negative).

    ``label = score > cut`` (higher is better) or ``score < cut`` (lower); at the median, ties go
    negative either way. ``cuts`` from the train split are reused for the test split. Raises, naming the
    column, when a score column is missing, not numeric or has missing values, and, on the train split,
    when every answer falls on one side of some attribute.
    """
    if {"chosen", "rejected"} <= set(ds.column_names):
        raise ValueError(f"{at}: 'attributes' need unpaired rows (one answer with its scores); this data is paired")
    if any("." in s["score"] and s["score"] not in ds.column_names for s in attributes.values()):
        ds = ds.flatten()  # nested flags (BeaverTails' category struct) -> 'category.animal_abuse' columns
    present = f"columns present: {sorted(ds.column_names)}"
    train, cuts = cuts is None, dict(cuts or {})
    for name, spec in attributes.items():
        col = spec["score"]
        dtype = getattr(ds.features.get(col), "dtype", "")
        if not dtype.startswith(("int", "uint", "float", "double", "bool")):
            what = f"not numeric ({ds.features[col]})" if col in ds.column_names else "missing"
            raise ValueError(f"{at}: attribute '{name}': score column '{col}' is {what}; {present}")
        scores = np.array(list(ds[col]), dtype=float)
        if np.isnan(scores).any():
            raise ValueError(f"{at}: attribute '{name}': score column '{col}' has missing values")
        if train:
            cuts[name] = score_threshold(scores, spec["threshold"])
        label = scores > cuts[name] if spec["direction"] == "higher" else scores < cuts[name]
        if train and (label.all() or not label.any()):
            raise ValueError(f"{at}: attribute '{name}': every answer is {'positive' if label.all() else 'negative'} "
                             f"(column '{col}', {spec['direction']} is better, cut {cuts[name]:g}): nothing to learn")
        ds = ds.remove_columns([c for c in [LABEL_PREFIX + name] if c in ds.column_names])
        ds = ds.add_column(LABEL_PREFIX + name, [bool(b) for b in label])
    if "label" not in ds.column_names:  # no label column nor binarize block: the majority of the attributes
        votes = np.mean([ds[c] for c in attribute_columns(attributes)], axis=0)
        ds = ds.add_column("label", [bool(v > 0.5) for v in votes])
    return ds, cuts


def attribute_columns(names) -> list[str]:
    return [LABEL_PREFIX + n for n in names]


def check_weights(weights, mixture, source: str) -> dict[str, float]:
    """The recipe's ``aot_attributes`` against the attributes every dataset of the mixture lists."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"{source}: key 'aot_attributes' must map attribute names to weights, got {weights!r}")
    listed = None
    for i, spec in enumerate(mixture.datasets):
        names = set(spec.attributes or {})
        if not names:
            raise ValueError(f"{source}: 'dataset_mixture.datasets[{i}]' lists no 'attributes' (method aot_multi)")
        if listed is not None and names != listed:
            raise ValueError(f"{source}: 'dataset_mixture.datasets[{i}].attributes' {sorted(names)} differ from "
                             f"those of datasets[0] {sorted(listed)}")
        listed = names
    for name, w in weights.items():
        if name not in listed:
            raise ValueError(f"{source}: 'aot_attributes' has a weight for attribute '{name}', which the "
                             f"dataset_mixture does not list (listed: {sorted(listed)})")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
            raise ValueError(f"{source}: 'aot_attributes.{name}' must be a number >= 0, got {w!r}")
    if not any(weights.values()):
        raise ValueError(f"{source}: 'aot_attributes' weights are all 0")
    return {k: float(v) for k, v in weights.items()}
