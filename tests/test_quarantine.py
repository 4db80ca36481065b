"""quarantine/restore: rejected files move out and back byte for byte; nothing is overwritten."""

from __future__ import annotations

import json

import images
from test_scan import tree_state

from imgcls.cli import main


def make_tree(root):
    images.jpeg(root / "a" / "ok.jpg", seed=1)
    images.jpeg(root / "b" / "ok.jpg", seed=2)
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "b" / "deep" / "bad.jpg").parent.mkdir(parents=True)
    (root / "b" / "deep" / "bad.jpg").write_bytes(b"not a jpeg at all")
    (root / "b" / "Thumbs.db").write_bytes(b"\0" * 64)
    return root


def test_quarantine_then_restore_round_trips_byte_for_byte(tmp_path, capsys):
    data, q = make_tree(tmp_path / "data"), tmp_path / "quarantine"
    before = tree_state(data)
    assert main(["scan", str(data), "--quarantine", str(q)]) == 0
    out = capsys.readouterr().out
    assert "Moved 2 rejected files" in out
    assert not (data / "a" / "empty.jpg").exists() and not (data / "b" / "deep" / "bad.jpg").exists()
    assert (q / "b" / "deep" / "bad.jpg").read_bytes() == b"not a jpeg at all"
    assert (data / "b" / "Thumbs.db").exists()  # ignored files are not rejected: they stay
    manifest = json.loads((q / "imgcls-quarantine.json").read_text())
    assert {e["stored"] for e in manifest["entries"]} == {"a/empty.jpg", "b/deep/bad.jpg"}
    assert all(e["reason"] for e in manifest["entries"])
    # Scanning again finds nothing to reject.
    assert main(["scan", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rejected"] == []

    assert main(["restore", str(q)]) == 0
    assert "Restored 2 files." in capsys.readouterr().out
    assert tree_state(data) == before  # bytes, modes and mtimes all back


def test_restore_never_overwrites(tmp_path, capsys):
    data, q = make_tree(tmp_path / "data"), tmp_path / "q"
    assert main(["scan", str(data), "--quarantine", str(q), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(doc["quarantined"]) == ["a/empty.jpg", "b/deep/bad.jpg"]
    (data / "a" / "empty.jpg").write_bytes(b"the user put a new file here")
    assert main(["restore", str(q)]) == 1
    err = capsys.readouterr().err
    assert "a/empty.jpg" in err and "not overwritten" in err
    assert (data / "a" / "empty.jpg").read_bytes() == b"the user put a new file here"
    assert (q / "a" / "empty.jpg").exists()  # still safe in quarantine
    assert (data / "b" / "deep" / "bad.jpg").read_bytes() == b"not a jpeg at all"


def test_quarantine_never_overwrites_and_refuses_inside_data(tmp_path, capsys):
    data, q = make_tree(tmp_path / "data"), tmp_path / "q"
    (q / "a").mkdir(parents=True)
    (q / "a" / "empty.jpg").write_bytes(b"older quarantined file")
    assert main(["scan", str(data), "--quarantine", str(q)]) == 0
    out = capsys.readouterr().out
    assert "Moved 1 rejected files" in out and "a/empty.jpg: already in the quarantine" in out
    assert (q / "a" / "empty.jpg").read_bytes() == b"older quarantined file"
    assert (data / "a" / "empty.jpg").exists()

    assert main(["scan", str(data), "--quarantine", str(data / "a" / "q")]) == 2
    assert "must be outside the data folder" in capsys.readouterr().err
    assert not (data / "a" / "q").exists()


def test_restore_without_manifest_is_one_line_error(tmp_path, capsys):
    assert main(["restore", str(tmp_path)]) == 2
    assert "no quarantine manifest" in capsys.readouterr().err
