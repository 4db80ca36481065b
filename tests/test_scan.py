"""scan: a dirty folder is reported file by file, nothing in it changes, errors are one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import images
import numpy as np
import pytest
from PIL import Image

from imgcls.cli import main
from imgcls.data.scan import ScanOptions, scan

NON_UTF8 = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 name, not valid UTF-8
UNICODE = "ünï cödé spaced 猫.jpg"


def tree_state(root: Path) -> dict:
    """Every entry under root: type, mode, size, mtime and content hash (links not followed)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            if os.path.islink(p):
                state[str(p)] = ("link", os.readlink(p))
            elif p.is_dir():
                state[str(p)] = ("dir", st.st_mode)
            elif p.is_file():
                state[str(p)] = ("file", st.st_mode, st.st_size, st.st_mtime_ns,
                                 hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                state[str(p)] = ("other", st.st_mode)
    return state


@pytest.fixture
def dirty(tmp_path) -> Path:
    """The PetImages-like mess: every kind of broken, odd and fine file."""
    root = tmp_path / "data"
    c, d = root / "cats", root / "dogs"
    images.jpeg(c / "good.jpg", seed=1)
    (c / "zero.jpg").parent.mkdir(parents=True, exist_ok=True)
    (c / "zero.jpg").write_bytes(b"")
    full = images.jpeg_bytes(64, 48, seed=2)
    (c / "truncated.jpg").write_bytes(full[: len(full) * 2 // 3])
    (c / "text.jpg").write_text("this is not a picture\n")
    images.save(c / "png_named.jpg", images.pattern(30, 20, 3), "PNG")
    images.animated_gif(c / "anim.gif")
    images.save(c / "cmyk.jpg", Image.fromarray(images.pattern(40, 30, 4)).convert("CMYK"), "JPEG")
    images.save(c / "gray.jpg", Image.fromarray(images.pattern(40, 30, 5)).convert("L"), "JPEG")
    images.png16(c / "deep16.png")
    images.save(c / "rgba.png", Image.fromarray(images.pattern(30, 30, 6)).convert("RGBA"), "PNG")
    images.exif_jpeg(c / "exif_only.jpg", jfif=False, seed=7)
    images.exif_jpeg(c / "rotated.jpg", orientation=6, seed=8)
    images.save(c / "pic.webp", images.pattern(32, 24, 9), "WEBP")
    images.save(c / "pic.tiff", images.pattern(32, 24, 10), "TIFF")
    images.save(c / "pic.bmp", images.pattern(32, 24, 11), "BMP")
    images.save(c / "no_extension", images.pattern(32, 24, 12), "JPEG")
    images.png_header_only(c / "bomb.png", 30000, 30000)  # 900 MP: over Pillow's own hard limit
    images.png_header_only(c / "bomb2.png", 10000, 10000)  # 100 MP: over our default limit
    images.save(c / "tiny.png", images.pattern(1, 1), "PNG")
    (c / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(500))
    (c / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(100))
    images.jpeg(c / ".hidden.jpg", seed=13)
    (c / "notes.txt").write_text("shot on my phone\n")
    images.jpeg(c / NON_UTF8, seed=14)
    images.jpeg(c / UNICODE, seed=15)
    images.jpeg(c / "nested" / "sub" / "deep.jpg", seed=16)
    os.symlink(".", c / "loop")  # a folder link back to its parent
    os.symlink("selfloop.jpg", c / "selfloop.jpg")  # a file link to itself
    os.mkfifo(c / "pipe.jpg")
    for i in range(3):
        images.jpeg(d / f"dog{i}.jpg", seed=100 + i)
    shutil.copyfile(c / "good.jpg", d / "dup_of_cat.jpg")  # same bytes, other class
    shutil.copyfile(d / "dog0.jpg", d / "dog0 copy.jpg")  # same bytes, same class
    return root


def run_json(capsys, *argv) -> dict:
    assert main(["scan", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_dirty_folder_is_reported_file_by_file_and_left_untouched(dirty, capsys):
    before = tree_state(dirty)
    doc = run_json(capsys, dirty)
    assert tree_state(dirty) == before

    rejected = {r["path"]: r["reason"] for r in doc["rejected"]}
    ignored = {r["path"]: r["reason"] for r in doc["ignored"]}
    assert doc["classes"] == ["cats", "dogs"]
    assert rejected["cats/zero.jpg"] == "empty file (0 bytes)"
    assert rejected["cats/truncated.jpg"].startswith("truncated or corrupt")
    assert rejected["cats/text.jpg"] == "not an image"
    assert rejected["cats/bomb.png"].startswith("too large to decode safely")
    assert rejected["cats/bomb2.png"].startswith("too large to decode safely")
    assert rejected["cats/tiny.png"].startswith("degenerate")
    assert rejected["cats/selfloop.jpg"] == "unreadable: symlink loop"
    assert set(rejected) == {"cats/zero.jpg", "cats/truncated.jpg", "cats/text.jpg",
                             "cats/bomb.png", "cats/bomb2.png", "cats/tiny.png",
                             "cats/selfloop.jpg"}
    assert ignored["cats/Thumbs.db"] == "system file"
    assert ignored["cats/.DS_Store"] == "hidden"
    assert ignored["cats/.hidden.jpg"] == "hidden"
    assert ignored["cats/notes.txt"] == "not an image"
    assert ignored["cats/pipe.jpg"] == "not a regular file"
    assert "already scanned" in ignored["cats/loop"]

    accepted_cats = {"good.jpg", "png_named.jpg", "anim.gif", "cmyk.jpg", "gray.jpg",
                     "deep16.png", "rgba.png", "exif_only.jpg", "rotated.jpg", "pic.webp",
                     "pic.tiff", "pic.bmp", "no_extension", NON_UTF8, UNICODE,
                     "nested/sub/deep.jpg"}
    assert doc["per_class"] == {"cats": len(accepted_cats), "dogs": 5}
    assert doc["images"] == len(accepted_cats) + 5
    assert sorted(doc["duplicates"]) == [["cats/good.jpg", "dogs/dup_of_cat.jpg"],
                                         ["dogs/dog0 copy.jpg", "dogs/dog0.jpg"]]
    assert doc["label_conflicts"] == [["cats/good.jpg", "dogs/dup_of_cat.jpg"]]

    index = scan(dirty)
    assert {s.path for s in index.samples if s.label == 0} == {f"cats/{n}" for n in accepted_cats}
    assert tree_state(dirty) == before


def test_human_report_names_each_rejected_file(dirty, capsys):
    assert main(["scan", str(dirty)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "Found 21 files belonging to 2 classes."
    assert "cats/zero.jpg: empty file" in out
    assert "label conflict" in out


def test_second_scan_reuses_results_and_notices_changes(dirty):
    first = scan(dirty)
    assert first.stats["decoded"] > 20
    again = scan(dirty)
    assert again.stats["decoded"] == 0
    assert again.fingerprint == first.fingerprint
    assert [s.path for s in again.samples] == [s.path for s in first.samples]
    # Replace a good file with a broken one: only that file is decoded again, and it is caught.
    (dirty / "dogs" / "dog1.jpg").write_bytes(b"garbage")
    third = scan(dirty)
    assert third.stats["decoded"] == 1
    assert "dogs/dog1.jpg" in {n.path for n in third.rejected}
    assert third.fingerprint != first.fingerprint


def test_parallel_scan_equals_serial_scan(tmp_path):
    root = tmp_path / "many"
    for i in range(120):
        images.jpeg(root / ("a" if i % 2 else "b") / f"{i}.jpg", w=24, h=20, seed=i)
    (root / "a" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    par = scan(root, ScanOptions(workers=2, use_cache=False))
    ser = scan(root, ScanOptions(workers=1, use_cache=False))
    assert par.samples == ser.samples and par.rejected == ser.rejected
    assert len(par.samples) == 120 and [n.path for n in par.rejected] == ["a/bad.jpg"]


def test_unreadable_file_is_rejected_and_scan_goes_on(tmp_path):
    root = tmp_path / "data"
    images.jpeg(root / "a" / "ok.jpg")
    images.jpeg(root / "b" / "ok.jpg", seed=3)
    secret = images.jpeg(root / "b" / "secret.jpg", seed=4)
    secret.chmod(0)
    cmd = [sys.executable, "-m", "imgcls", "scan", str(root), "--json", "--no-cache"]
    if os.geteuid() == 0:
        # root reads any file; drop the capabilities that let it, as a normal user would be.
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv to drop read capabilities")
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["rejected"] == [{"path": "b/secret.jpg", "reason": "unreadable: Permission denied"}]
    assert doc["per_class"] == {"a": 1, "b": 1}


@pytest.mark.parametrize("setup, message", [
    (lambda r: None, "no such folder"),
    (lambda r: (r.mkdir(), images.jpeg(r / "x.jpg")), "no class folders found"),
    (lambda r: images.jpeg(r / "only" / "x.jpg"), "only one class folder (only)"),
    (lambda r: (images.jpeg(r / "a" / "x.jpg"), (r / "b").mkdir(),
                (r / "b" / "x.jpg").write_bytes(b"")), "has no usable image (1 rejected"),
])
def test_unusable_folder_is_one_line_error(tmp_path, capsys, setup, message):
    root = tmp_path / "data"
    setup(root)
    assert main(["scan", str(root)]) == 2
    err = capsys.readouterr().err
    errs = images.error_lines(err)
    assert len(errs) == 1 and message in errs[0]


def test_file_instead_of_folder_is_one_line_error(tmp_path, capsys):
    f = images.jpeg(tmp_path / "x.jpg")
    assert main(["scan", str(f)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_cache_dir_inside_data_is_refused(dirty, capsys):
    assert main(["scan", str(dirty), "--cache-dir", str(dirty / "cats" / "cache")]) == 2
    assert "inside the data folder" in capsys.readouterr().err
    assert not (dirty / "cats" / "cache").exists()


def test_class_folders_sorted_and_samples_found_recursively(tmp_path):
    root = tmp_path / "d"
    for cls in ("zebra", "Apple", "mango"):
        images.jpeg(root / cls / "a" / "b" / "c.jpg", seed=len(cls))
    index = scan(root)
    assert index.class_names == ["Apple", "mango", "zebra"]  # Python's sort, like Keras
    assert [(s.path, s.label) for s in index.samples] == [
        ("Apple/a/b/c.jpg", 0), ("mango/a/b/c.jpg", 1), ("zebra/a/b/c.jpg", 2)]
    assert all(s.width == 48 and s.height == 40 for s in index.samples)


def test_index_json_round_trip(dirty):
    index = scan(dirty)
    again = type(index).from_dict(json.loads(json.dumps(index.to_dict())))
    assert again.samples == index.samples and again.rejected == index.rejected
    assert again.abspath(again.samples[0]) == os.path.join(dirty, again.samples[0].path)
    assert np.array_equal(np.asarray(Image.open(again.abspath(again.samples[0]))),
                          np.asarray(Image.open(index.abspath(index.samples[0]))))


@pytest.mark.parametrize("link, target, where", [
    ("ants/up", "..", "the data folder itself"),
    ("ants/more", "../bees", "class folder bees"),
    ("ants/other", "../bees/sub", "bees/sub in class bees"),
])
def test_a_link_never_relabels_another_class(tmp_path, capsys, link, target, where):
    root = tmp_path / "data"
    for i in range(3):
        images.jpeg(root / "ants" / f"a{i}.jpg", seed=i)
        images.jpeg(root / "bees" / f"b{i}.jpg", seed=50 + i)
        images.jpeg(root / "bees" / "sub" / f"s{i}.jpg", seed=80 + i)
    os.symlink(target, root / link)
    outside = tmp_path / "elsewhere"  # a link out of the data folder still works
    images.jpeg(outside / "far.jpg", seed=99)
    os.symlink(outside, root / "ants" / "ext")
    before = tree_state(root)
    doc = run_json(capsys, root)
    assert doc["per_class"] == {"ants": 4, "bees": 6}  # every class keeps its own photos
    ignored = {r["path"]: r["reason"] for r in doc["ignored"]}
    assert where in ignored[link] and "not followed" in ignored[link]
    index = scan(root, ScanOptions(use_cache=False))
    by_label = {s.path: index.class_names[s.label] for s in index.samples}
    assert by_label["ants/ext/far.jpg"] == "ants"
    assert all(c == p.split("/")[0] for p, c in by_label.items())
    assert tree_state(root) == before


def test_a_folder_outside_reached_from_two_classes_goes_to_neither(tmp_path, capsys):
    """Which label such photos should have is unknowable: they are left out of both classes
    and both links are named, where the first class used to claim them quietly."""
    root = tmp_path / "data"
    for i in range(3):
        images.jpeg(root / "ants" / f"a{i}.jpg", seed=i)
        images.jpeg(root / "bees" / f"b{i}.jpg", seed=50 + i)
    outside = tmp_path / "elsewhere"
    for i in range(2):
        images.jpeg(outside / "deeper" / f"far{i}.jpg", seed=90 + i)
    os.symlink(outside, root / "ants" / "ext")
    os.symlink(outside, root / "bees" / "ext")
    os.symlink(outside, root / "bees" / "again")  # a second link in the same class
    before = tree_state(root)
    doc = run_json(capsys, root)
    assert doc["per_class"] == {"ants": 3, "bees": 3}
    ignored = {r["path"]: r["reason"] for r in doc["ignored"]}
    assert "also reached from bees/" in ignored["ants/ext"] and "left out" in ignored["ants/ext"]
    assert "under two classes" in ignored["bees/again"] or "under two classes" in ignored["bees/ext"]
    index = scan(root, ScanOptions(use_cache=False))
    assert not [s.path for s in index.samples if "far" in s.path]
    assert tree_state(root) == before


def test_a_file_link_into_another_class_is_not_taken(tmp_path, capsys):
    root = tmp_path / "data"
    images.jpeg(root / "ants" / "a.jpg", seed=1)
    images.jpeg(root / "bees" / "b.jpg", seed=2)
    os.symlink("../bees/b.jpg", root / "ants" / "stolen.jpg")
    doc = run_json(capsys, root)
    assert doc["per_class"] == {"ants": 1, "bees": 1}
    assert "belong to bees" in {r["path"]: r["reason"] for r in doc["ignored"]}["ants/stolen.jpg"]


def test_a_class_folder_linked_to_another_class_is_not_a_class(tmp_path, capsys):
    root = tmp_path / "data"
    for c in ("ants", "bees", "wasps"):
        images.jpeg(root / c / "x.jpg", seed=len(c))
    os.symlink("bees", root / "bees2")
    doc = run_json(capsys, root)
    assert doc["classes"] == ["ants", "bees", "wasps"]
    assert "not a class" in {r["path"]: r["reason"] for r in doc["ignored"]}["bees2"]
