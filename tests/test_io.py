"""aot_handbook.io: atomic writes (the old file or the new one, never half of one; no temporary left behind),
the byte format each caller relies on, and JSON Lines errors that name the file and the line."""

import json
import os
import stat

import pytest

from aot_handbook.io import atomic_path, read_jsonl, write_json, write_jsonl, write_text


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
