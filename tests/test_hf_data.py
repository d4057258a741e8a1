import pytest
import torch
from datasets import Dataset, IterableDataset
from transformers import GPT2Config, GPT2LMHeadModel

from online_select.hf import (
    CausalLMLoss,
    add_ids,
    candidate_batches,
    dataset_fingerprint,
    lm_blocks,
    reference_table,
    save_reference_table,
)
from online_select.reference import ReferenceMismatchError, ReferenceTable, samples_fingerprint


def test_add_ids_map_style_and_streaming():
    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(10)]})
    with_ids = add_ids(ds)
    assert with_ids["id"] == list(range(10))
    shuffled = with_ids.shuffle(seed=0)
    assert [int(i) for i in shuffled["id"]] != list(range(10))
    assert all(row["text"] == f"t{row['id']}" for row in shuffled)  # ids travel with their rows

    def gen():
        for i in range(7):
            yield {"text": f"t{i}"}

    stream = add_ids(IterableDataset.from_generator(gen))
    assert [row["id"] for row in stream] == list(range(7))


def test_candidate_batches_map_style_and_streaming_carry_ids():
    ds = add_ids(Dataset.from_dict({"x": list(range(20))}))
    batches = candidate_batches(ds, 8, seed=1, epochs=2)
    got = list(batches)
    assert len(got) == 4 and all(len(b["id"]) == 8 for b in got)
    assert all(torch.equal(b["id"], b["x"]) for b in got)

    def gen():
        for i in range(20):
            yield {"x": i}

    stream = add_ids(IterableDataset.from_generator(gen))
    got = list(candidate_batches(stream, 5, seed=0, epochs=1))
    assert len(got) == 4 and sorted(torch.cat([b["id"] for b in got]).tolist()) == list(range(20))


def test_reference_table_is_keyed_by_id_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    ids = torch.randint(0, 32, (10, 16))
    ds = add_ids(Dataset.from_dict({"input_ids": ids.tolist()})).shuffle(seed=3)
    table = reference_table(model, ds, CausalLMLoss(), batch_size=4)
    with torch.no_grad():
        direct = CausalLMLoss()(model.eval(), {"input_ids": ids})
    assert torch.allclose(table.table, direct, atol=1e-5)
    assert table.extra.shape == (10, 2)
    fingerprint = {"tokens_sha256": samples_fingerprint(ids)}
    save_reference_table(table, str(tmp_path / "ref.safetensors"), fingerprint)
    loaded = ReferenceTable.load(tmp_path / "ref.safetensors", fingerprint)
    assert torch.equal(loaded.table, table.table) and torch.equal(loaded.extra, table.extra)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ref.safetensors"]  # written through a renamed temporary
    with pytest.raises(ReferenceMismatchError, match="tokens_sha256"):
        ReferenceTable.load(tmp_path / "ref.safetensors", {"tokens_sha256": samples_fingerprint(ids[:5])})


def test_dataset_fingerprint_names_the_rows_a_table_was_built_for(tmp_path):
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, 50, (int(n),), generator=g).tolist() for n in torch.randint(1, 9, (5000,), generator=g)]
    train = add_ids(Dataset.from_dict({"input_ids": tokens, "label": [i % 3 for i in range(5000)], "note": ["x"] * 5000}))
    fingerprint = dataset_fingerprint(train, ["input_ids", "label"])
    assert fingerprint["num_ids"] == "5000" and fingerprint == dataset_fingerprint(train, ["label", "input_ids"])
    assert fingerprint == dataset_fingerprint(train.map(lambda row: {"note": "y"}), ["input_ids", "label"])  # unnamed column
    assert fingerprint != dataset_fingerprint(train)  # every column, the note too
    relabelled = train.map(lambda row: {"label": (row["label"] + 1) % 3 if row["id"] == 4321 else row["label"]})
    shorter = train.select(range(4999))
    retokenized = train.map(lambda row: {"input_ids": row["input_ids"][:-1] if row["id"] == 7 else row["input_ids"]})
    assert fingerprint == dataset_fingerprint(train.shuffle(seed=0), ["input_ids", "label"])  # ids travel with their rows
    for other in (relabelled, shorter, retokenized):
        assert dataset_fingerprint(other, ["input_ids", "label"])["rows_sha256"] != fingerprint["rows_sha256"]
    table = ReferenceTable(torch.rand(5000))
    save_reference_table(table, str(tmp_path / "ref.safetensors"), fingerprint)
    assert torch.equal(ReferenceTable.load(tmp_path / "ref.safetensors", fingerprint).table, table.table)
    with pytest.raises(ReferenceMismatchError, match="rows_sha256"):
        ReferenceTable.load(tmp_path / "ref.safetensors", dataset_fingerprint(relabelled, ["input_ids", "label"]))
    with pytest.raises(KeyError, match=r"no column\(s\) \['labels'\]"):
        dataset_fingerprint(train, ["labels"])
    with pytest.raises(KeyError, match="add_ids"):
        dataset_fingerprint(train.remove_columns(["id"]))
    with pytest.raises(TypeError, match="map-style"):
        dataset_fingerprint(train.to_iterable_dataset())


def test_reference_table_scores_a_dataset_smaller_than_a_batch():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    ds = add_ids(Dataset.from_dict({"input_ids": torch.randint(0, 32, (5, 16)).tolist()}))
    assert len(reference_table(model, ds, CausalLMLoss(), batch_size=64)) == 5
    with pytest.raises(ValueError, match="the dataset is empty"):
        reference_table(model, ds.select([]), CausalLMLoss())


class _CharTokenizer:
    eos_token_id = 0

    def __call__(self, text):
        return {"input_ids": [1 + (ord(c) % 50) for c in text]}


def test_lm_blocks_cut_documents_into_fixed_blocks_with_ids():
    ds = Dataset.from_dict({"text": ["abcdefgh" * 3, "xyz" * 5]})
    blocks = lm_blocks(ds, _CharTokenizer(), block_size=8)
    assert all(len(b) == 8 for b in blocks["input_ids"])
    assert blocks["id"] == list(range(len(blocks)))
    assert len(blocks) == (24 + 1 + 15 + 1) // 8
