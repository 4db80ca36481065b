"""download: a local HTTP server serves a zip made here: full, interrupted+resumed, checksum,
zip-slip, absolute path, link, existing file; the extracted tree scans cleanly."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import threading
import zipfile

import images
import pytest

from imgcls.cli import main
from imgcls.data.scan import scan


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    cut_after: dict = {}  # path -> bytes sent before the connection drops (once)
    range_from_zero = False  # answer a Range with 206 but the whole file (a broken server)

    def log_message(self, *a):
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = 0 if self.range_from_zero else int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.cut_after.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.files, _Handler.cut_after, _Handler.range_from_zero = {}, {}, False
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield _Handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def pet_zip(extra=None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls in ("Cat", "Dog"):
            for i in range(3):
                zf.writestr(f"PetImages/{cls}/{i}.jpg", images.jpeg_bytes(40, 30, seed=i + 10 * len(cls)))
        zf.writestr("readme[1].txt", "test archive\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_full_download_extracts_a_scannable_tree(server, tmp_path, capsys):
    h, base = server
    h.files["/pets.zip"] = pet_zip()
    assert main(["download", "--dest", str(tmp_path / "d"), "--url", base + "/pets.zip"]) == 0
    assert "Extracted 7 files" in capsys.readouterr().out
    index = scan(tmp_path / "d" / "PetImages")
    assert index.class_names == ["Cat", "Dog"] and len(index.samples) == 6 and not index.rejected
    # Running it again finds everything in place: nothing is overwritten, nothing fails.
    assert main(["download", "--dest", str(tmp_path / "d"), "--url", base + "/pets.zip"]) == 0
    assert "already there" in capsys.readouterr().out


def _interrupted(server, tmp_path) -> tuple[bytes, str]:
    """A download whose connection drops after a third: (the archive's bytes, its URL)."""
    h, base = server
    data = pet_zip()
    h.files["/pets.zip"] = data
    h.cut_after["/pets.zip"] = len(data) // 3
    url = base + "/pets.zip"
    assert main(["download", "--dest", str(tmp_path), "--url", url, "--timeout", "5"]) == 2
    return data, url


def test_interrupted_download_resumes_byte_identical(server, tmp_path, capsys):
    data, url = _interrupted(server, tmp_path)
    assert "resume" in capsys.readouterr().err
    part = tmp_path / "pets.zip.part"
    assert 0 < part.stat().st_size < len(data)
    sha = hashlib.sha256(data).hexdigest()
    assert main(["download", "--dest", str(tmp_path), "--url", url, "--sha256", sha]) == 0
    assert "resumed at" in capsys.readouterr().out
    assert (tmp_path / "pets.zip").read_bytes() == data and not part.exists()


def test_a_partial_reply_for_another_range_is_not_appended(server, tmp_path, capsys):
    """A 206 whose Content-Range starts elsewhere than asked must not be appended."""
    data, url = _interrupted(server, tmp_path)
    assert (tmp_path / "pets.zip.part").stat().st_size > 0
    server[0].range_from_zero = True  # now the server sends the whole file as "bytes 0-..."
    assert main(["download", "--dest", str(tmp_path), "--url", url]) == 0
    assert (tmp_path / "pets.zip").read_bytes() == data


def test_checksum_mismatch_is_refused(server, tmp_path, capsys):
    h, base = server
    h.files["/pets.zip"] = pet_zip()
    assert main(["download", "--dest", str(tmp_path), "--url", base + "/pets.zip",
                 "--sha256", "0" * 64]) == 2
    err = capsys.readouterr().err
    errs = images.error_lines(err)
    assert len(errs) == 1 and "checksum mismatch" in errs[0]
    assert not (tmp_path / "pets.zip").exists() and not (tmp_path / "PetImages").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "PetImages/../../evil.txt", "/tmp/evil.txt",
                                  "C:/evil.txt"])
def test_escaping_entries_refuse_the_whole_archive(server, tmp_path, capsys, name):
    h, base = server
    h.files["/bad.zip"] = pet_zip({name: "gotcha"})
    dest = tmp_path / "d"
    assert main(["download", "--dest", str(dest), "--url", base + "/bad.zip"]) == 2
    assert "unsafe archive" in capsys.readouterr().err
    assert not (dest / "PetImages").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_entry_is_refused(server, tmp_path, capsys):
    h, base = server
    buf = io.BytesIO(pet_zip())
    with zipfile.ZipFile(buf, "a") as zf:
        info = zipfile.ZipInfo("PetImages/Cat/link.jpg")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    h.files["/link.zip"] = buf.getvalue()
    assert main(["download", "--dest", str(tmp_path / "d"), "--url", base + "/link.zip"]) == 2
    assert "symbolic link" in capsys.readouterr().err


def test_existing_different_file_is_never_overwritten(server, tmp_path, capsys):
    h, base = server
    h.files["/pets.zip"] = pet_zip()
    mine = tmp_path / "PetImages" / "Cat" / "0.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own file")
    assert main(["download", "--dest", str(tmp_path), "--url", base + "/pets.zip"]) == 2
    assert "not overwriting" in capsys.readouterr().err
    assert mine.read_bytes() == b"my own file"


def test_unreachable_server_and_404_fail_fast_with_one_line(server, tmp_path, capsys):
    h, base = server
    assert main(["download", "--dest", str(tmp_path), "--url", base + "/missing.zip"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    assert main(["download", "--dest", str(tmp_path), "--url", f"http://127.0.0.1:{port}/x.zip",
                 "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    errs = images.error_lines(err)
    assert len(errs) == 1 and errs[0].startswith("imgcls: error: no network")
    assert not os.listdir(tmp_path) or all(p.endswith(".part") for p in os.listdir(tmp_path))


def test_a_file_that_is_not_a_zip_is_a_one_line_error(server, tmp_path, capsys):
    h, base = server
    h.files["/pets.zip"] = b"<html>a login page, not an archive</html>"
    assert main(["download", "--dest", str(tmp_path), "--url", base + "/pets.zip"]) == 2
    err = capsys.readouterr().err
    errs = images.error_lines(err)
    assert len(errs) == 1 and "not a zip archive" in errs[0]
