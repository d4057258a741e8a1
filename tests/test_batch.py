from collections import namedtuple

import numpy as np
import pytest
import torch

from online_select import BatchError, batch_size, take


def test_tensor_and_tuple_batches():
    x, y = torch.arange(20).reshape(10, 2), torch.arange(10)
    idx = torch.tensor([3, 0, 7])
    assert torch.equal(take(x, idx), x[idx])
    sx, sy = take((x, y), idx)
    assert torch.equal(sx, x[idx]) and torch.equal(sy, y[idx])
    assert isinstance(take([x, y], idx), list)
    assert batch_size((x, y)) == 10


def test_namedtuple_keeps_type():
    Pair = namedtuple("Pair", "x y")
    out = take(Pair(torch.zeros(4, 3), torch.arange(4)), torch.tensor([1, 2]))
    assert isinstance(out, Pair) and out.y.tolist() == [1, 2]


def test_dict_with_strings_ids_and_batch_level_values():
    batch = {
        "input_ids": torch.arange(12).reshape(4, 3),
        "text": ["a", "b", "c", "d"],
        "meta": {"source": np.array([10, 11, 12, 13])},
        "num_items": 7,
        "scale": torch.tensor(2.0),
    }
    out = take(batch, torch.tensor([2, 0]))
    assert out["text"] == ["c", "a"]
    assert out["input_ids"].tolist() == [[6, 7, 8], [0, 1, 2]]
    assert out["meta"]["source"].tolist() == [12, 10]
    assert out["num_items"] == 7 and out["scale"].item() == 2.0
    assert batch_size(batch) == 4


def test_batch_encoding_stays_batch_encoding():
    from transformers import BatchEncoding

    enc = BatchEncoding({"input_ids": torch.ones(5, 4, dtype=torch.long), "attention_mask": torch.ones(5, 4)})
    out = take(enc, torch.tensor([4, 1]))
    assert isinstance(out, BatchEncoding)
    assert out["input_ids"].shape == (2, 4)


def test_top_level_list_of_strings_is_per_sample():
    assert take(["x", "y", "z"], torch.tensor([2])) == ["z"]
    assert batch_size(["x", "y", "z"]) == 3


def test_a_tuple_of_lists_is_a_tuple_of_fields():
    texts, labels = [f"text {i}" for i in range(16)], list(range(16))
    assert batch_size((texts, labels)) == 16
    assert take((texts, labels), torch.tensor([7, 0])) == (["text 7", "text 0"], [7, 0])
    assert batch_size([texts, labels]) == 2  # a list of lists is a list of samples
    with pytest.raises(BatchError, match="ragged batch"):
        batch_size((texts, labels[:3]))


def test_ragged_batch_names_the_field():
    with pytest.raises(BatchError, match=r"ragged batch: batch\['labels'\] has 3 samples but batch\['input'\] has 4"):
        batch_size({"input": torch.zeros(4, 2), "labels": torch.zeros(3)})


def test_empty_batch_is_an_error():
    with pytest.raises(BatchError, match="empty"):
        batch_size(torch.zeros(0, 3))
    with pytest.raises(BatchError, match="no per-sample field"):
        batch_size({"n": 3})


def test_a_list_of_uncollated_samples_is_an_error_not_a_batch_of_their_fields():
    # Read as fields, 8 samples with 5-value inputs would be a "batch" of 5, sliced inside each sample.
    dicts = [{"input": torch.randn(5), "label": torch.tensor(i % 3), "id": i} for i in range(8)]
    with pytest.raises(BatchError, match=r"list of 8 samples \(each a mapping with a scalar 'label'\).*default_collate"):
        batch_size(dicts)
    with pytest.raises(BatchError, match=r"list of 8 samples \(each a tuple with a scalar at position 1\)"):
        batch_size([(np.zeros(5), i) for i in range(8)])
    # Groups of fields are not samples: batched tensors, and a batch-level scalar the same in each group.
    pair = ({"a": torch.zeros(8, 3), "n": 2}, {"a": torch.ones(8, 3), "n": 2})
    assert batch_size(pair) == 8 and batch_size([torch.zeros(8, 2), torch.arange(8)]) == 8


def test_unsliceable_type_is_an_error():
    with pytest.raises(BatchError, match="expected a tensor"):
        batch_size({"x": object()})


def test_concat_joins_batches_of_one_structure_and_names_a_mismatch():
    from online_select.batch import concat

    Pair = namedtuple("Pair", "x y")
    a = {"x": torch.ones(2, 3), "ids": np.arange(2), "text": ["a", "b"], "pair": Pair(torch.zeros(2), torch.ones(2)), "scale": 2.0}
    b = {"x": torch.zeros(1, 3), "ids": np.arange(2, 3), "text": ["c"], "pair": Pair(torch.ones(1), torch.zeros(1)), "scale": 3.0}
    joined = concat([a, b])
    assert batch_size(joined) == 3 and joined["scale"] == 2.0 and joined["text"] == ["a", "b", "c"]
    assert torch.equal(joined["x"], torch.cat([a["x"], b["x"]])) and joined["ids"].tolist() == [0, 1, 2]
    assert isinstance(joined["pair"], Pair) and joined["pair"].x.tolist() == [0, 0, 1]
    assert torch.equal(take(joined, torch.arange(2))["x"], a["x"])
    with pytest.raises(BatchError, match=r"batch\['x'\] of batch 1 has shape \(1, 4\)"):
        concat([a, dict(b, x=torch.zeros(1, 4))])
    with pytest.raises(BatchError, match="fields"):
        concat([a, {"x": b["x"]}])
    with pytest.raises(BatchError, match="at least one"):
        concat([])
