"""aot_handbook.io: atomic writes, JSON Lines, and errors that name the file and the line."""

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from aot_handbook.errors import UserError
from aot_handbook.io import DuplicateKeyError, atomic_path, load_yaml, read_jsonl, write_json, write_jsonl, write_text
from tests.helpers import REPO


def test_write_json_bytes_and_no_leftovers(tmp_path):
    data = {"b": 1, "a": [1.5, None], "path": tmp_path, "text": "±"}
    path = write_json(tmp_path / "sub" / "run.json", data)  # the parent folder is made
    # run.json and results: indent 2, keys in insertion order, non-JSON values as str, a final newline
    assert path.read_bytes() == (json.dumps(data, indent=2, default=str) + "\n").encode()
    assert write_json(path, {"x": 1}, indent=1).read_text() == '{\n "x": 1\n}\n'
    assert os.listdir(path.parent) == ["run.json"]
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkstemp's 0600


def test_jsonl_round_trip_and_formats(tmp_path):
    rows = [{"b": 2, "a": "x"}, {"a": 1}]
    assert write_jsonl(tmp_path / "u.jsonl", rows).read_text() == '{"b": 2, "a": "x"}\n{"a": 1}\n'
    assert write_jsonl(tmp_path / "s.jsonl", rows, sort_keys=True).read_text() == '{"a": "x", "b": 2}\n{"a": 1}\n'
    with pytest.raises(TypeError):
        write_jsonl(tmp_path / "bad.jsonl", [{"p": tmp_path}])
    assert not (tmp_path / "bad.jsonl").exists()
    assert json.loads(write_jsonl(tmp_path / "d.jsonl", [{"p": tmp_path}], default=str).read_text()) == {
        "p": str(tmp_path)}
    (tmp_path / "blank.jsonl").write_text('{"a": 1}\n\n  \n{"a": 2}\n')
    assert read_jsonl(tmp_path / "blank.jsonl") == [{"a": 1}, {"a": 2}]


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,\n')
    with pytest.raises(ValueError, match=rf"{path}, line 3: not valid JSON"):
        read_jsonl(path)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_text(tmp_path / "table.md", "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".md" and tmp.name.startswith(".table.md.")
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["table.md"]
    with atomic_path(path) as tmp:
        tmp.write_text("new\n")
        assert path.read_text() == "old\n"  # readers see the old file until the rename
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["table.md"]


# ---- io.load_yaml: YAML as safe_load reads it, except that a key given twice is an error naming key, file, lines
def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_a_top_level_key_given_twice_names_key_file_and_both_lines(tmp_path):
    path = _write(tmp_path, "method: sft\nlearning_rate: 1.0e-3\nbeta: 0.1\nlearning_rate: 1.0e-4\n")
    with pytest.raises(DuplicateKeyError) as err:
        load_yaml(path)
    assert str(err.value).startswith(f"{path}: key 'learning_rate' is given twice, on line 2 and line 4")
    assert yaml.safe_load(path.read_text())["learning_rate"] == 1e-4  # what YAML alone does: the last one, silently


@pytest.mark.parametrize("text,key,lines", [
    ("dataset_mixture:\n  datasets:\n    - data_files: {train: a.jsonl}\n      weight: 0.5\n      weight: 1.0\n",
     "weight", (4, 5)),
    ("a:\n  b: 1\n  c: 2\n  b: 3\n", "b", (2, 4)),
    ("x: {p: 1, q: 2, p: 3}\n", "p", (1, 1)),
    ("1: one\n1: uno\n", 1, (1, 2)),
    ("'beta': 0.1\nbeta: 0.2\n", "beta", (1, 2)),  # quoting does not make it another key
])
def test_nested_flow_and_quoted_duplicates(tmp_path, text, key, lines):
    message = rf"key {key!r} is given twice, on line {lines[0]} and line {lines[1]}"
    with pytest.raises(DuplicateKeyError, match=message):
        load_yaml(_write(tmp_path, text))


def test_merge_keys_may_be_overridden_and_the_same_key_in_two_mappings_is_fine(tmp_path):
    text = "base: &b {lr: 1, beta: 2}\nrun:\n  <<: *b\n  lr: 5\nother: {lr: 7}\nlist: [{lr: 1}, {lr: 2}]\n"
    assert load_yaml(_write(tmp_path, text)) == yaml.safe_load(text)
    assert load_yaml(_write(tmp_path, text))["run"] == {"lr": 5, "beta": 2}


def test_every_yaml_of_the_repository_reads_as_safe_load_reads_it():
    """No false alarm on the real recipes, sweeps, eval recipes and accelerate configs."""
    files = sorted(REPO.glob("recipes/**/*.yaml"))
    assert len(files) > 50
    for f in files:
        assert load_yaml(f) == yaml.safe_load(f.read_text()), f


def test_other_bad_files_are_errors_naming_the_file(tmp_path):
    with pytest.raises(UserError, match="YAML file not found: .*missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    bad = _write(tmp_path, "a: [1, 2\n")
    with pytest.raises(UserError, match=rf"^{bad}: not valid YAML"):
        load_yaml(bad)
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(UserError, match=rf"^{binary}: a YAML must be UTF-8 text"):
        load_yaml(binary)
