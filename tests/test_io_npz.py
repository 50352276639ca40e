"""Tests for MedSegBench-style ``.npz`` bundles and plain ``.npy`` stacks."""

from __future__ import annotations

import numpy as np
import pytest

from medground.io.volume import VolumeConfig, discover_volume_cases, iter_volume_slices

COUNT, HEIGHT, WIDTH = 5, 16, 20


def colour_images() -> np.ndarray:
    """(N, H, W, 3) uint8 images whose red channel stores the image index."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(COUNT, HEIGHT, WIDTH, 3), dtype=np.uint8)
    images[..., 0] = np.arange(COUNT, dtype=np.uint8)[:, None, None]
    return images


def binary_labels() -> np.ndarray:
    """(N, H, W) uint8 0/1 masks: images 1 and 3 have a polyp, image 3 the larger one."""
    labels = np.zeros((COUNT, HEIGHT, WIDTH), dtype=np.uint8)
    labels[1, 2:5, 3:6] = 1
    labels[3, 8:14, 10:18] = 1
    return labels


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / "kvasir_256.npz"
    np.savez_compressed(
        path,
        train_images=colour_images(),
        train_label=binary_labels(),
        val_images=colour_images()[:2],
        val_label=binary_labels()[:2],
    )
    return path


def npz_config(**fields) -> VolumeConfig:
    fields.setdefault("format", "npz")
    fields.setdefault("labels", {1: "polyp"})
    fields.setdefault("strategy", "all_foreground")
    return VolumeConfig(**fields)


def test_npz_bundle_end_to_end(bundle):
    images, labels = colour_images(), binary_labels()

    slices = list(iter_volume_slices(bundle, bundle, npz_config()))

    assert [item.index for item in slices] == [1, 3]
    for item in slices:
        assert item.plane is None
        assert item.patient_left_on is None
        assert item.spacing_mm is None
        assert item.image.shape == (HEIGHT, WIDTH, 3)
        assert item.image.dtype == np.uint8
        assert np.array_equal(item.image, images[item.index])
        assert item.labels.dtype == np.int32
        assert np.array_equal(item.labels, labels[item.index])
        assert item.class_names == {1: "polyp"}


def test_npz_largest_per_label_picks_largest_mask(bundle):
    slices = list(iter_volume_slices(bundle, bundle, npz_config(strategy="largest_per_label")))

    assert [(item.index, item.selected_for) for item in slices] == [(3, (1,))]


def test_npz_split_selects_arrays(bundle):
    slices = list(iter_volume_slices(bundle, bundle, npz_config(npz={"split": "val"})))

    assert [item.index for item in slices] == [1]


def test_npz_missing_key_lists_present_arrays(bundle):
    with pytest.raises(ValueError, match=r"kvasir_256\.npz: no array 'test_images'.*train_label"):
        list(iter_volume_slices(bundle, bundle, npz_config(npz={"split": "test"})))


def test_npz_count_mismatch_rejected(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=colour_images(), train_label=binary_labels()[:4])

    with pytest.raises(ValueError, match=r"bad\.npz has shape \(5, 16, 20, 3\).*\(4, 16, 20\)"):
        list(iter_volume_slices(path, path, npz_config()))


def test_npz_undeclared_label_rejected(tmp_path):
    path = tmp_path / "bundle.npz"
    labels = binary_labels() * 255
    np.savez(path, train_images=colour_images(), train_label=labels)

    with pytest.raises(ValueError, match=r"bundle\.npz: label values \[255\] match no declared"):
        list(iter_volume_slices(path, path, npz_config()))


def test_npz_separate_label_path_rejected(tmp_path, bundle):
    with pytest.raises(ValueError, match="pass the bundle as both"):
        list(iter_volume_slices(bundle, tmp_path / "other.npz", npz_config()))


def test_npz_fortran_ordered_member_read(tmp_path):
    path = tmp_path / "fortran.npz"
    np.savez(
        path,
        train_images=np.asfortranarray(colour_images()),
        train_label=np.asfortranarray(binary_labels()),
    )

    slices = list(iter_volume_slices(path, path, npz_config()))

    assert [item.index for item in slices] == [1, 3]
    assert np.array_equal(slices[1].image, colour_images()[3])
    assert np.array_equal(slices[1].labels, binary_labels()[3])


def test_npz_discovery_lists_bundles(tmp_path, bundle):
    found = discover_volume_cases(tmp_path, npz_config())

    assert [case.case_id for case in found.cases] == ["kvasir_256"]
    assert found.cases[0].image_path == bundle


def test_npy_stack_with_percentile_scaling(tmp_path):
    images = np.linspace(-1.0, 1.0, COUNT * HEIGHT * WIDTH, dtype=np.float32)
    images = images.reshape(COUNT, HEIGHT, WIDTH)
    labels = binary_labels()
    image_path, label_path = tmp_path / "images.npy", tmp_path / "labels.npy"
    np.save(image_path, images)
    np.save(label_path, labels)

    slices = list(
        iter_volume_slices(
            image_path, label_path, npz_config(format="npy", percentile=(0.0, 100.0))
        )
    )

    assert [item.index for item in slices] == [1, 3]
    for item in slices:
        # Each stack image is scaled on its own, from its minimum to its maximum.
        assert item.image.shape == (HEIGHT, WIDTH)
        assert int(item.image.min()) == 0
        assert int(item.image.max()) == 255
        assert np.array_equal(item.labels, labels[item.index])


def test_npy_single_image(tmp_path):
    image_path, label_path = tmp_path / "image.npy", tmp_path / "labels.npy"
    np.save(image_path, colour_images()[3, ..., 0])
    np.save(label_path, binary_labels()[3])

    (item,) = iter_volume_slices(image_path, label_path, npz_config(format="npy"))

    assert item.index == 0
    assert item.image.shape == (HEIGHT, WIDTH)
