import numpy as np
import pytest
import torch

from online_select.data import DataError, TensorLoader, load_idx_folder, read_idx, symmetric_label_noise

from .conftest import RECIPE, write_idx


def test_idx_round_trip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.gz", "b"):
        write_idx(tmp_path / name, arr)
        assert np.array_equal(read_idx(tmp_path / name), arr)


def test_malformed_idx(tmp_path):
    (tmp_path / "x").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "x")
    write_idx(tmp_path / "y", np.zeros((2, 2), dtype=np.uint8))
    (tmp_path / "y").write_bytes((tmp_path / "y").read_bytes()[:-1])
    with pytest.raises(DataError, match="header says"):
        read_idx(tmp_path / "y")


def test_a_truncated_gzip_idx_file_is_named(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros((50, 28, 28), dtype=np.uint8))
    (tmp_path / "a.gz").write_bytes((tmp_path / "a.gz").read_bytes()[:40])
    with pytest.raises(DataError, match="a.gz is not a readable gzip file"):
        read_idx(tmp_path / "a.gz")
    (tmp_path / "b.gz").write_bytes(b"\x00\x00\x08\x01not gzip")
    with pytest.raises(DataError, match="b.gz is not a readable gzip file"):
        read_idx(tmp_path / "b.gz")


def test_hub_image_splits_read_the_named_label_column_and_name_what_is_missing():
    import datasets

    from online_select.data import hub_image_splits

    def split(n):
        images = [np.full((4, 4), i, dtype=np.uint8) for i in range(n)]
        data = {"img": images, "fine_label": list(range(n)), "coarse_label": [i % 2 for i in range(n)]}
        features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.Value("int64"),
                                      "coarse_label": datasets.Value("int64")})
        return datasets.Dataset.from_dict(data, features=features)

    hub = datasets.DatasetDict({"train": split(6), "test": split(3)})
    out = hub_image_splits(hub, "cifar-like", "fine_label")
    assert out["train_labels"].tolist() == list(range(6)) and out["test_images"].shape == (3, 4, 4)
    with pytest.raises(DataError, match="cifar-like has no label column 'label' .*set data.label_column"):
        hub_image_splits(hub, "cifar-like")
    as_arrays = datasets.DatasetDict({name: datasets.Dataset.from_dict({"image": [[[i] * 4] * 4 for i in range(n)],
                                                                        "label": list(range(n))})
                                      for name, n in (("train", 5), ("test", 2))})
    assert hub_image_splits(as_arrays, "mnist-like")["train_images"].shape == (5, 4, 4)
    with pytest.raises(DataError, match="no 'test' split"):
        hub_image_splits(datasets.DatasetDict({"train": split(6)}), "cifar-like", "fine_label")


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_idx_folder(tmp_path / "missing")
    with pytest.raises(DataError, match="lacks the IDX files: train-images-idx3-ubyte"):
        load_idx_folder(tmp_path)


def test_folder_loads(tiny_idx_folder):
    data = load_idx_folder(tiny_idx_folder)
    assert data["train_images"].shape == (1200, 28, 28) and data["test_labels"].shape == (400,)


def test_symmetric_noise_rate_and_flips_change_the_label():
    labels = torch.randint(0, 10, (20000,))
    noisy, flags = symmetric_label_noise(labels, 0.3, 10, seed=1)
    assert abs(flags.float().mean().item() - 0.3) < 0.02
    assert bool((noisy[flags] != labels[flags]).all()) and bool((noisy[~flags] == labels[~flags]).all())
    again, _ = symmetric_label_noise(labels, 0.3, 10, seed=1)
    assert torch.equal(noisy, again)


def test_tensor_loader_is_resumable():
    fields = {"x": torch.arange(50)}
    a = TensorLoader(fields, 8, seed=0)
    for _ in range(9):
        next(a)
    b = TensorLoader(fields, 8, seed=0)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        assert torch.equal(next(a)["x"], next(b)["x"])


def test_tensor_loader_epochs_cover_everything_once():
    loader = TensorLoader({"x": torch.arange(40)}, 10, seed=0)
    seen = torch.cat([next(loader)["id"] for _ in range(4)])
    assert sorted(seen.tolist()) == list(range(40))


def test_image_task_loads_bytes_and_its_models_see_the_standardized_images(tiny_idx_folder, tmp_path):
    from online_select.config import load_config
    from online_select.tasks import build_task

    task = build_task(load_config(RECIPE, [f"data.path={tiny_idx_folder}"]))
    batch = next(iter(task.train_loader(32, 0)))
    assert batch["input"].dtype == torch.uint8  # a candidate batch copies one byte a pixel
    scaled = torch.from_numpy(load_idx_folder(tiny_idx_folder)["train_images"].astype("float32"))[:, None] / 255.0
    assert torch.equal(task.train_x, (scaled - scaled.mean()) / scaled.std())  # bitwise what the models saw before
    assert torch.equal(task.loss.input_transform(batch["input"]), task.train_x[batch["id"]])

    floats = tmp_path / "floats"
    floats.mkdir()
    for source in tiny_idx_folder.iterdir():
        if not source.name.startswith("train-images"):
            (floats / source.name).write_bytes(source.read_bytes())
    write_idx(floats / "train-images-idx3-ubyte", np.zeros((1200, 28, 28)), dtype=">f4")
    with pytest.raises(ValueError, match="train images are torch.float32: the image task reads 8-bit pixels"):
        build_task(load_config(RECIPE, [f"data.path={floats}"]))


def test_class_count_names_labels_that_are_not_class_indices():
    from online_select.data import class_count

    assert class_count(torch.tensor([0, 2, 1, 2]), torch.tensor([1, 0])) == 3
    with pytest.raises(DataError, match="no training label is 0 and they run up to 10: labels must be 0-based"):
        class_count(torch.arange(1, 11), torch.tensor([1, 10]))
    with pytest.raises(DataError, match="2 test label.s. are negative .e.g. -1"):
        class_count(torch.tensor([0, 1]), torch.tensor([-1, 0, -1]))
    with pytest.raises(DataError, match=r"2 class\(es\) of 0..4 have no training sample \(2, 4\)"):
        class_count(torch.tensor([0, 1, 3]), torch.tensor([4]))
    with pytest.raises(DataError, match=r"3999999998 class\(es\) of 0..4000000000 have no training sample \(2, 3, .*12, \.\.\.\)"):
        class_count(torch.tensor([0, 1, 4_000_000_000]), torch.tensor([0]))  # named without a table of every class
    with pytest.raises(DataError, match="the train split has no labels"):
        class_count(torch.zeros(0, dtype=torch.long), torch.tensor([0]))


def _rewritten_copy(source, folder, rewrite):
    """The IDX folder ``source`` with each split's ``(images, labels)`` passed through ``rewrite``."""
    raw = load_idx_folder(source)
    folder.mkdir()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = rewrite(raw[f"{split}_images"], raw[f"{split}_labels"])
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def _by_label(images, labels):
    """Both splits sorted by label, as some hub datasets come."""
    order = np.argsort(labels, kind="stable")
    return images[order], labels[order]


def test_max_train_samples_draws_a_random_subset_that_keeps_each_samples_noisy_label(tiny_idx_folder, tmp_path):
    from online_select.config import load_config
    from online_select.data import seeded_subset
    from online_select.tasks import build_task

    folder = _rewritten_copy(tiny_idx_folder, tmp_path / "sorted", _by_label)
    full = build_task(load_config(RECIPE, [f"data.path={folder}"]))
    cut = build_task(load_config(RECIPE, [f"data.path={folder}", "data.max_train_samples=100", "data.eval_size=100"]))
    rows = seeded_subset(1200, 100, full.config.data.noise_seed)
    assert len(cut.train_ids) == 100 and len(cut.test_y) == 100
    assert torch.equal(cut.train_pixels, full.train_pixels[rows]) and torch.equal(cut.clean_y, full.clean_y[rows])
    assert torch.equal(cut.train_y, full.train_y[rows]) and torch.equal(cut.is_noisy, full.is_noisy[rows])
    assert 0 < int(cut.is_noisy.sum()) < 100
    assert set(cut.clean_y.tolist()) == set(range(10)) and set(cut.test_y.tolist()) == set(range(10))  # not the first classes
    assert torch.equal(full.test_y, torch.from_numpy(load_idx_folder(folder)["test_labels"].astype("int64")))


def test_an_image_folder_with_1_based_labels_is_an_error(tiny_idx_folder, tmp_path):
    from online_select.config import load_config
    from online_select.tasks import build_task

    folder = _rewritten_copy(tiny_idx_folder, tmp_path / "one_based", lambda images, labels: (images, labels + 1))
    with pytest.raises(DataError, match="labels must be 0-based class indices"):
        build_task(load_config(RECIPE, [f"data.path={folder}"]))
