"""preprocess: every mode becomes the same-size RGB; orientation, alpha, 16-bit, crop/pad."""

from __future__ import annotations

import sys

import images
import numpy as np
import pytest
from PIL import Image

from imgcls.data.preprocess import ImageError, PreprocessSpec, load_image, open_image


def spec(**kw):
    return PreprocessSpec(height=24, width=32, **kw)


def test_stretch_is_pillow_bilinear_resize_of_the_rgb_image(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as on the ONNX Runtime path
    arr = images.pattern(67, 45, 1)
    p = images.save(tmp_path / "x.png", arr)
    want = np.asarray(Image.fromarray(arr).resize((32, 24), Image.Resampling.BILINEAR))
    assert np.array_equal(load_image(p, spec()), want)


@pytest.mark.parametrize("w,h,tw,th", [(67, 45, 32, 24), (250, 187, 180, 180), (31, 17, 64, 48),
                                       (640, 480, 90, 120)])
def test_torch_resize_stays_within_one_grey_level_of_pillow(w, h, tw, th):
    import torch  # noqa: F401  (loaded: load_image resizes with PyTorch's kernel)

    rng = np.random.default_rng(w)
    # a smooth picture plus noise: edges and texture, as in a photo
    arr = np.clip(images.pattern(w, h, 3).astype(int) + rng.integers(-40, 40, (h, w, 3)),
                  0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    want = np.asarray(img.resize((tw, th), Image.Resampling.BILINEAR)).astype(int)
    from imgcls.data.preprocess import _torch_stretch

    assert _torch_stretch(img, PreprocessSpec(th, tw)) is not None  # the path under test ran
    got = load_image(img, PreprocessSpec(th, tw))
    assert got.shape == (th, tw, 3) and got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"]
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 1 and diff.mean() < 0.1


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "1", "RGBA", "LA", "I;16", "I", "F"])
def test_every_mode_becomes_rgb_uint8(tmp_path, mode):
    img = Image.fromarray(images.pattern(40, 30, 2))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img)[..., 0].astype(np.uint16) * 257)
    elif mode in ("I", "F"):
        img = img.convert("L").convert(mode)
    else:
        img = img.convert(mode)
    out = load_image(img, spec())
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    assert out.std() > 5  # the picture survived, not a flat colour


def test_16_bit_is_scaled_not_clipped(tmp_path):
    p = images.png16(tmp_path / "d.png")
    out = load_image(p, PreprocessSpec(30, 40))
    src = np.asarray(Image.open(p)).astype(float) / 257
    assert np.abs(out[..., 0].astype(float) - src).max() <= 1


def test_alpha_is_composited_on_the_background():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent everywhere but the centre
    rgba[4:6, 4:6, 3] = 255
    out = load_image(Image.fromarray(rgba, "RGBA"), PreprocessSpec(10, 10, background=(0, 0, 255)))
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert tuple(out[5, 5]) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    # Orientation 6: stored landscape, displayed rotated 90 degrees clockwise (portrait).
    p = images.exif_jpeg(tmp_path / "r.jpg", orientation=6, w=48, h=32)
    out = load_image(p, PreprocessSpec(48, 32, resize="stretch", draft=False))
    stored = np.asarray(Image.open(p).convert("RGB"))
    want = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))
    assert out.shape == (48, 32, 3)
    assert np.abs(out.astype(int) - want.astype(int)).mean() < 1


def test_crop_keeps_the_centre_and_pad_adds_bars():
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, 20:40] = 200  # a bright centre third
    crop = load_image(Image.fromarray(arr), PreprocessSpec(20, 20, resize="crop"))
    assert crop.min() >= 190  # only the centre is left
    pad = load_image(Image.fromarray(arr), PreprocessSpec(60, 60, resize="pad", fill=(9, 9, 9)))
    assert tuple(pad[0, 0]) == (9, 9, 9) and tuple(pad[30, 30]) == (200, 200, 200)


def test_jpeg_draft_decode_stays_close_to_full_decode(tmp_path):
    p = images.jpeg(tmp_path / "big.jpg", w=800, h=600, seed=3)
    fast = load_image(p, PreprocessSpec(64, 64)).astype(int)
    full = load_image(p, PreprocessSpec(64, 64, draft=False)).astype(int)
    assert np.abs(fast - full).mean() < 2.5
    with Image.open(p) as im:  # and the draft request really reduces the decode
        im.draft("RGB", (64, 64))
        assert im.size[0] < 800


def test_broken_input_raises_image_error(tmp_path):
    full = images.jpeg_bytes(64, 64)
    with pytest.raises(ImageError, match="truncated"):
        load_image(full[: len(full) // 2], spec())
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"hello", spec())
    bomb = images.png_header_only(tmp_path / "b.png", 20000, 20000)
    with pytest.raises(ImageError, match="too large"):
        open_image(bomb)


def test_spec_round_trips_and_validates():
    s = PreprocessSpec(100, 120, resize="pad", fill=(1, 2, 3))
    assert PreprocessSpec.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError):
        PreprocessSpec(resize="squash")
