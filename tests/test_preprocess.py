"""Preprocessing must be pixel-identical to Ultralytics' validation path, and robust to bad files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from quantbench.data.preprocess import IMGSZ, PAD_VALUE, Letterbox, iter_batches, letterbox, load_image, to_network_input
from quantbench.errors import DataError

ultralytics = pytest.importorskip("ultralytics", reason="ultralytics is the reference for preprocessing")


def ultralytics_validation_image(path: Path, size: int = IMGSZ):
    """Ultralytics' own code path: BaseDataset.load_image, then LetterBox(scaleup=False).

    Returns the padded HWC BGR image and the validator's ``ratio_pad``.
    """
    from ultralytics.data.augment import LetterBox
    from ultralytics.data.base import BaseDataset

    dataset = SimpleNamespace(  # the attributes load_image reads on an uncached, non-augmenting dataset
        ims=[None], im_files=[str(path)], npy_files=[Path("/nonexistent/no-cache.npy")], cache=None,
        cv2_flag=cv2.IMREAD_COLOR, imgsz=size, augment=False, channels=3, prefix="",
    )
    im, (h0, w0), (h1, w1) = BaseDataset.load_image(dataset, 0)
    labels = LetterBox(new_shape=size, scaleup=False)(labels={"img": im, "ratio_pad": (h1 / h0, w1 / w0)})
    return labels["img"], labels["ratio_pad"]


def write_image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def odd_shaped_images(tmp_path_factory) -> list[Path]:
    """Enlarged, shrunk, exact-size, portrait, odd-padding and very thin images (lossless PNG)."""
    root = tmp_path_factory.mktemp("odd")
    shapes = [(37, 100), (480, 640), (640, 640), (1000, 333), (427, 640), (641, 1283), (3, 900), (900, 1)]
    return [write_image(root / f"{h}x{w}.png", h, w, seed=i) for i, (h, w) in enumerate(shapes)]


def test_letterbox_is_pixel_identical_to_ultralytics_on_val_images(val500: Path):
    for path in sorted((val500 / "images").glob("*.jpg"))[:6]:
        expected, _ = ultralytics_validation_image(path)
        padded, _ = letterbox(cv2.imread(str(path)))
        assert padded.shape == (IMGSZ, IMGSZ, 3)
        np.testing.assert_array_equal(padded, expected, err_msg=str(path))


def test_letterbox_is_pixel_identical_to_ultralytics_on_odd_shapes(odd_shaped_images: list[Path]):
    for path in odd_shaped_images:
        expected, (gains, pads) = ultralytics_validation_image(path)
        padded, box = letterbox(cv2.imread(str(path)))
        np.testing.assert_array_equal(padded, expected, err_msg=str(path))
        # the geometry the validator uses to map boxes back
        assert (box.resized_h / box.orig_h, box.resized_w / box.orig_w) == pytest.approx(gains, rel=1e-12)
        assert (box.pad_x, box.pad_y) == pads


def test_padding_is_grey_114_and_centred():
    img = np.zeros((320, 640, 3), np.uint8)  # already 640 wide: only padded, 160 px above and below
    padded, box = letterbox(img)
    assert (box.pad_x, box.pad_y, box.gain) == (0.0, 160.0, 1.0)
    assert (padded[:160] == PAD_VALUE).all() and (padded[480:] == PAD_VALUE).all()
    assert (padded[160:480] == 0).all()


def test_load_image_tensor_matches_ultralytics_normalisation(val500: Path):
    import torch

    path = sorted((val500 / "images").glob("*.jpg"))[0]
    tensor, box = load_image(path)
    padded, _ = ultralytics_validation_image(path)
    # Ultralytics' validator: HWC BGR -> CHW RGB, then ``img.float() / 255``
    expected = (torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[::-1])).float() / 255).numpy()
    assert tensor.dtype == np.float32 and tensor.shape == (3, IMGSZ, IMGSZ)
    np.testing.assert_array_equal(tensor, expected)
    assert (box.orig_h, box.orig_w) == cv2.imread(str(path)).shape[:2]


def test_scale_boxes_back_matches_ultralytics_scale_boxes(odd_shaped_images: list[Path]):
    import torch
    from ultralytics.utils.ops import scale_boxes

    rng = np.random.default_rng(1)
    for path in odd_shaped_images:
        _, ratio_pad = ultralytics_validation_image(path)
        _, box = letterbox(cv2.imread(str(path)))
        xy = rng.uniform(-20, IMGSZ + 20, (50, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0, 200, (50, 2))], axis=1).astype(np.float32)
        expected = scale_boxes((IMGSZ, IMGSZ), torch.from_numpy(boxes.copy()), (box.orig_h, box.orig_w), ratio_pad)
        np.testing.assert_allclose(box.scale_boxes_back(boxes), expected.numpy(), rtol=1e-6, atol=1e-4)


def test_scale_boxes_back_clips_to_the_original_image():
    box = Letterbox(gain=0.5, pad_x=0.0, pad_y=80.0, orig_h=960, orig_w=1280, size=640)
    out = box.scale_boxes_back(np.array([[-10, 0, 700, 600]], np.float32))
    np.testing.assert_allclose(out, [[0, 0, 1280, 960]])
    centre = box.scale_boxes_back(np.array([[320, 320, 330, 330]], np.float32))
    np.testing.assert_allclose(centre, [[640, 480, 660, 500]])


def test_load_image_rejects_missing_and_corrupt_files(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    with pytest.raises(DataError, match="cannot decode"):
        load_image(corrupt)


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_iter_batches_keeps_order_and_skips_bad_files(tmp_path: Path, batch_size: int):
    good = [write_image(tmp_path / f"img{i}.png", 50 + 10 * i, 80, seed=i) for i in range(6)]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"garbage" * 100)
    missing = tmp_path / "missing.jpg"
    paths = [good[0], corrupt, good[1], good[2], missing, good[3], good[4], good[5]]
    skipped: list[tuple[Path, str]] = []

    batches = list(iter_batches(paths, batch_size, size=64, workers=3, on_skip=lambda p, r: skipped.append((p, r))))

    assert [p for b in batches for p in b.paths] == good
    assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert [p for p, _ in skipped] == [corrupt, missing]
    for batch in batches:
        assert batch.images.shape == (len(batch), 3, 64, 64) and batch.images.dtype == np.float32
        for image, path, box in zip(batch.images, batch.paths, batch.letterboxes):
            expected, expected_box = load_image(path, 64)
            np.testing.assert_array_equal(image, expected)
            assert box == expected_box


def test_iter_batches_rejects_a_non_positive_batch_size(tmp_path: Path):
    with pytest.raises(DataError, match="batch size 0"):
        next(iter_batches([tmp_path / "a.jpg"], 0))


def test_network_input_equals_the_strided_division_it_replaced(val500: Path, odd_shaped_images: list[Path]):
    """Plane-by-plane division gives bit for bit the floats of dividing the transposed HWC view."""
    for path in sorted((val500 / "images").glob("*.jpg"))[:5] + odd_shaped_images:
        padded, _ = letterbox(cv2.imread(str(path), cv2.IMREAD_COLOR))
        reference = np.divide(padded.transpose(2, 0, 1)[::-1], np.float32(255), dtype=np.float32)
        converted = to_network_input(padded)
        assert converted.dtype == np.float32 and converted.flags.c_contiguous
        np.testing.assert_array_equal(converted, reference)


def test_a_batch_of_one_is_a_view_of_its_image(tmp_path: Path):
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), np.full((40, 60, 3), 200, np.uint8))
    batch, = iter_batches([path], 1, size=64)
    assert batch.images.shape == (1, 3, 64, 64) and batch.images.base is not None
    np.testing.assert_array_equal(batch.images[0], load_image(path, 64)[0])


def test_reused_batch_buffers_hold_each_batch_until_the_next_few(tmp_path: Path):
    """reuse_buffers=True: the same pixels as fresh arrays, batch by batch (6 batches through a
    ring of 4 arrays: the 5th and the short 6th reuse the 1st and 2nd arrays)."""
    paths = []
    for i in range(17):
        paths.append(tmp_path / f"{i:02d}.jpg")
        cv2.imwrite(str(paths[-1]), np.full((30 + i, 50, 3), 10 * i, np.uint8))
    fresh = [b.images.copy() for b in iter_batches(paths, 3, size=64, workers=2)]
    seen = []
    for batch in iter_batches(paths, 3, size=64, workers=2, reuse_buffers=True):
        seen.append(batch.images.copy())  # a consumer done with the batch before asking for the next
    assert [len(b) for b in seen] == [3, 3, 3, 3, 3, 2]
    for a, b in zip(fresh, seen):
        np.testing.assert_array_equal(a, b)


def test_load_image_equals_converting_the_letterboxed_image(val500: Path, odd_shaped_images: list[Path]):
    """load_image fills the border itself and divides only the image: the same floats, bit for bit."""
    for path in sorted((val500 / "images").glob("*.jpg"))[:5] + odd_shaped_images:
        padded, box = letterbox(cv2.imread(str(path), cv2.IMREAD_COLOR))
        tensor, loaded_box = load_image(path)
        assert loaded_box == box
        np.testing.assert_array_equal(tensor, to_network_input(padded))


def test_the_decoders_own_warnings_do_not_print_but_quantbench_and_others_do(calib500: Path, tmp_path: Path):
    """Issue 22: libjpeg's "Premature end of JPEG file" and OpenCV's "[ WARN ]" printed before
    quantbench's sentence. Run in a child process: the filter works on the process's fd 2."""
    whole = sorted((calib500 / "images").iterdir())[0]
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[:20000])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not a jpeg")
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from pathlib import Path\n"
        "from quantbench.data.preprocess import iter_batches\n"
        f"paths = [Path({str(truncated)!r}), Path({str(garbage)!r}), Path({str(tmp_path / 'missing.jpg')!r})]\n"
        "batches = list(iter_batches(paths, 1, size=64, workers=2))\n"
        "print('decoded', sum(len(b) for b in batches), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert "Premature end of JPEG" not in done.stderr and "[ WARN:" not in done.stderr, done.stderr
    assert f"skipping image {garbage} could not be read (OpenCV cannot decode it)" in done.stderr
    assert "missing.jpg could not be read (file not found)" in done.stderr
    assert "decoded 1" in done.stderr  # the truncated file decodes; the child's own writes still print
