import json
import random
from pathlib import Path

import pytest
import torch

from online_select.bench import Comparison, RunSummary, summarise_run
from online_select.cli import main
from online_select.lm_corpus import (
    EOS,
    JUNK_KINDS,
    BigramLM,
    build_noisy_corpus,
    garble,
    read_text_folder,
    split_documents,
)

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the nation congress people state government year law public great country war peace trade "
         "duty power union right good should which would their have been those every upon").split()


def write_corpus(folder: Path, docs: int = 40, words: int = 700, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        sentences = []
        for _ in range(words // 10):
            sentence = " ".join(rng.choice(WORDS) for _ in range(10))
            sentences.append(sentence.capitalize() + ".")
        (folder / f"{d:03d}.txt").write_text(" ".join(sentences))
    return folder


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("sotu"))


def test_noisy_corpus_mixes_the_asked_fraction_of_each_junk_kind(text_folder):
    from online_select.lm_corpus import read_text_folder

    corpus = build_noisy_corpus(read_text_folder(text_folder), block_size=32, vocab_size=300, clean_blocks=60,
                                validation_blocks=4, junk_fraction=0.4)
    assert corpus.train.shape[1] == 32 and corpus.validation.shape == (4, 32)
    assert int((corpus.kind == 0).sum()) == 60
    assert abs(float(corpus.noisy.float().mean()) - 0.4) < 0.03
    assert set(corpus.kind.unique().tolist()) == set(range(1 + len(JUNK_KINDS)))
    assert int(corpus.train.max()) < corpus.vocab_size
    # A vocabulary larger than the text can learn: random-token junk stays inside the one it learnt.
    small = build_noisy_corpus(read_text_folder(text_folder), block_size=32, vocab_size=5000, clean_blocks=20,
                               validation_blocks=4, junk_fraction=0.5, junk_mix={"random_tokens": 1.0})
    assert small.vocab_size < 5000 and int(small.train.max()) < small.vocab_size


def test_validation_blocks_zero_takes_every_block_of_the_validation_documents(text_folder):
    from online_select.lm_corpus import read_text_folder

    docs = read_text_folder(text_folder)
    first = build_noisy_corpus(docs, block_size=32, vocab_size=300, clean_blocks=60, validation_blocks=4)
    every = build_noisy_corpus(docs, block_size=32, vocab_size=300, clean_blocks=60, validation_blocks=0)
    assert len(every.validation) > 4
    assert torch.equal(every.validation[:4], first.validation)
    assert torch.equal(every.train, first.train)
    with pytest.raises(ValueError, match="validation_blocks must be >= 0"):
        build_noisy_corpus(docs, block_size=32, vocab_size=300, clean_blocks=60, validation_blocks=-1)


def test_the_corpus_records_the_document_each_block_starts_in(text_folder):
    docs = read_text_folder(text_folder)
    corpus = build_noisy_corpus(docs, block_size=32, vocab_size=300, clean_blocks=60, validation_blocks=0)
    split = split_documents(docs)
    clean = corpus.kind == 0
    assert bool((corpus.document[~clean] == -1).all())
    assert bool((corpus.document[clean] >= 0).all()) and int(corpus.document.max()) < len(split["train"])
    assert len(corpus.validation_document) == len(corpus.validation)
    assert bool((corpus.validation_document.diff() >= 0).all())  # validation blocks are in document order

    def documents_of(texts: list[str]):
        """The documents' tokens in one stream and where each ends, to find a block's document by search."""
        eos = corpus.tokenizer.token_to_id(EOS)
        ids, ends = [], []
        for text in texts:
            ids += corpus.tokenizer.encode(text).ids + [eos]
            ends.append(len(ids))

        def owner(block: torch.Tensor) -> int:
            width = len(block)
            starts = [i for i in range(0, len(ids) - width + 1, width) if ids[i : i + width] == block.tolist()]
            assert len(starts) == 1
            return next(d for d, end in enumerate(ends) if starts[0] < end)

        return owner

    train_owner, validation_owner = documents_of(split["train"]), documents_of(split["validation"])
    for row in torch.nonzero(clean).flatten()[:10].tolist():
        assert train_owner(corpus.train[row]) == int(corpus.document[row])
    for row in range(len(corpus.validation)):
        assert validation_owner(corpus.validation[row]) == int(corpus.validation_document[row])


def test_a_scorer_input_model_on_a_task_without_any_is_an_error(text_folder, tmp_path):
    from online_select.config import load_config
    from online_select.tasks import build_task

    task = build_task(load_config(str(ROOT / "recipes" / "lm_noisy_corpus.yaml"), _lm_args(text_folder, tmp_path)))
    assert task.scorer_model("none") is None
    with pytest.raises(ValueError, match="scorer.model='mlp': the NoisyCorpusLMTask has no scorer input models"):
        task.scorer_model("mlp")


def test_the_lm_task_takes_max_train_samples_at_random_and_cuts_validation_to_eval_size(text_folder, tmp_path):
    from online_select.config import load_config
    from online_select.tasks import build_task

    recipe = str(ROOT / "recipes" / "lm_noisy_corpus.yaml")
    full_task = build_task(load_config(recipe, _lm_args(text_folder, tmp_path)))
    cut_task = build_task(load_config(recipe, _lm_args(text_folder, tmp_path, "data.max_train_samples=30", "data.eval_size=2")))
    full, cut = full_task.corpus, cut_task.corpus
    assert len(full.train) == 120 and len(cut.train) == 30 and cut.validation.shape[0] == 2
    fingerprint = full_task.reference_fingerprint()  # a reference table saved for one cannot load into the other
    assert fingerprint["online_select.num_ids"] == "120" and cut_task.reference_fingerprint()["online_select.num_ids"] == "30"
    assert fingerprint == build_task(load_config(recipe, _lm_args(text_folder, tmp_path, "seed=3"))).reference_fingerprint()
    assert 0 < int(cut.noisy.sum()) < 30  # junk kept in proportion, not only the clean blocks that come first
    kind_of = {tuple(row): kind for row, kind in zip(full.train.tolist(), full.kind.tolist())}
    assert [kind_of[tuple(row)] for row in cut.train.tolist()] == cut.kind.tolist()
    document_of = {tuple(row): doc for row, doc in zip(full.train.tolist(), full.document.tolist())}
    assert [document_of[tuple(row)] for row in cut.train.tolist()] == cut.document.tolist()
    assert cut.validation_document.tolist() == full.validation_document[:2].tolist()
    assert full_task.document_names["validation"] == ["000", "020"]  # every 20th file, as the documents are split
    assert full_task.document_names["train"][0] == "002" and len(full_task.document_names["train"]) == 36


def test_a_missing_text_folder_names_the_make_target_that_fetches_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make text-data") as raised:
        read_text_folder(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(raised.value)
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "\ntext-data:" in makefile


def test_documents_split_disjointly_and_garble_corrupts():
    docs = [f"doc {i}" for i in range(45)]
    split = split_documents(docs)
    assert sum(len(v) for v in split.values()) == 45
    assert not set(split["validation"]) & set(split["train"]) and not set(split["holdout"]) & set(split["train"])
    text = "the government of the united states shall meet in congress every year"
    garbled = garble(text, random.Random(0), rate=0.3)
    assert garbled != text and len(garbled) > len(text) // 2


def test_bigram_reference_scores_seen_text_lower_than_random_tokens():
    g = torch.Generator().manual_seed(0)
    pattern = torch.arange(20).repeat(10)[None, :].expand(8, -1) % 20
    lm = BigramLM(50).fit(pattern)
    random_blocks = torch.randint(0, 50, (8, 200), generator=g)
    assert float(lm.features(pattern)[:, 0].mean()) < float(lm.features(random_blocks)[:, 0].mean())


def _lm_args(folder, out, *extra):
    return [f"data.path={folder}", f"output_dir={out}", "data.max_length=32", "data.extra.vocab_size=300",
            "data.extra.clean_blocks=60", "data.extra.validation_blocks=4", "model.width=16",
            "model.extra.layers=1", "model.extra.heads=2", "selection.candidate_batch_size=16", "selection.keep=4",
            "train.max_steps=6", "train.eval_every=3", "train.checkpoint_every=3", "train.warmup_steps=1",
            "train.progress=false", "train.threads=1", "logging.trackers=[]", *extra]


@pytest.mark.filterwarnings("ignore:online_select. resumed with settings other")  # it extends the run on resume
def test_lm_recipe_trains_resumes_and_benches_on_eval_loss(text_folder, tmp_path):
    recipe = str(ROOT / "recipes" / "lm_noisy_corpus.yaml")
    out = tmp_path / "run"
    assert main(["train", recipe, *_lm_args(text_folder, out, "train.max_steps=3")]) == 0
    assert main(["train", recipe, *_lm_args(text_folder, out, "train.resume=auto")]) == 0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "eval/loss" in line]
    assert [line["step"] for line in evals] == [0, 3, 6]
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert 0.0 <= evals[-1]["selection/noisy_share"] <= 1.0
    bench_out = tmp_path / "bench"
    assert main(["bench", recipe, "--policies", "uniform,predicted_learnability", "--out", str(bench_out),
                 *_lm_args(text_folder, tmp_path / "b")]) == 0
    table = (bench_out / "bench.md").read_text()
    assert "best loss" in table and "| predicted_learnability |" in table


def test_the_whole_corpus_recipe_is_the_lm_recipe_with_its_measured_settings_and_trains(text_folder, tmp_path):
    from online_select.config import config_to_dict, load_config
    from online_select.loop import _flat

    recipes = ROOT / "recipes"
    short = _flat(config_to_dict(load_config(recipes / "lm_noisy_corpus.yaml")))
    whole = _flat(config_to_dict(load_config(recipes / "lm_whole_corpus.yaml")))
    changed = {key: whole[key] for key in whole if whole[key] != short[key]}
    assert changed == {
        "output_dir": "runs/lm_whole_corpus", "data.extra.clean_blocks": 14000, "data.extra.validation_blocks": 0,
        "data.extra.max_chars": 0, "selection.policy": "predicted_reducible_loss", "train.max_steps": 4800,
        "train.lr": 0.001, "train.eval_every": 200, "train.keep_best": True, "train.checkpoint_every": 600,
    }
    out = tmp_path / "whole"
    args = _lm_args(text_folder, out, "data.extra.validation_blocks=0", "train.keep_best=true")
    assert main(["train", str(recipes / "lm_whole_corpus.yaml"), *args]) == 0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "eval/loss" in line]
    assert [line["step"] for line in evals] == [0, 3, 6] and evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert (out / "best").is_dir()


def test_bench_min_metric_reaches_a_target_from_above():
    curve = [{"step": 0, "wall_s": 0.0, "eval/loss": 5.0}, {"step": 10, "wall_s": 1.0, "eval/loss": 3.0},
             {"step": 20, "wall_s": 2.0, "eval/loss": 3.5}]
    loss = Comparison("eval/loss", "min")
    run = summarise_run("p", 0, curve, loss)
    assert run.best == 3.0 and run.best_step == 10 and run.final == 3.5
    assert run.first_reaching(3.2) == (10.0, 1.0)
    steps, _ = RunSummary("u", 0, curve, loss).first_reaching(2.0)
    assert steps != steps  # NaN: never reached


def _tiny_encoder(folder: Path) -> str:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), "good", "bad", "movie", "."]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return str(folder)


def test_repeated_snippets_are_kept_once_and_conflicting_ones_dropped():
    from online_select.text_tasks import drop_duplicate_texts

    texts = ["A fine film.", "dull", "a  FINE film.", "Tense, tight.", "dull", "tense, tight.", "new"]
    labels = [1, 0, 1, 1, 0, 0, 1]
    assert drop_duplicate_texts(texts, labels) == (["A fine film.", "dull", "new"], [1, 0, 1])
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        drop_duplicate_texts(texts[:3], labels[:2])


@pytest.mark.parametrize("reference", ["bow", "minilm"])
def test_rotten_tomatoes_recipe_runs_on_generated_snippets(tmp_path, monkeypatch, reference):
    import online_select.text_tasks as text_tasks

    rng = random.Random(0)
    texts, labels = [], []
    for _ in range(400):
        y = rng.randrange(2)
        texts.append(" ".join(rng.choice(WORDS) for _ in range(6)) + (" good movie ." if y else " bad movie ."))
        labels.append(y)
    monkeypatch.setattr(text_tasks, "load_rotten_tomatoes", lambda source, hub_name, text_column, label_column: (texts, labels))
    model_dir = _tiny_encoder(tmp_path / "encoder")
    out = tmp_path / "rt"
    recipe = str(ROOT / "recipes" / "rotten_tomatoes_noisy.yaml")
    args = [f"model.pretrained_path={model_dir}", f"output_dir={out}", "data.extra.test_size=100", "data.max_length=16",
            "selection.candidate_batch_size=32", "selection.keep=8", "train.max_steps=6", "train.eval_every=3",
            "train.checkpoint_every=0", "train.progress=false", "train.threads=1", "logging.trackers=[]",
            "train.lr=0.001", "reference.epochs=1", f"reference.model={reference}"]
    assert main(["train", recipe, *args]) == 0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "eval/accuracy" in line]
    assert [line["step"] for line in evals] == [0, 3, 6]
    assert evals[-1]["reference_ids"] == 300 and "selection/noisy_share" in evals[-1]


def test_a_holdout_reference_for_rotten_tomatoes_never_sees_what_is_trained_on(tmp_path, monkeypatch):
    import online_select.text_tasks as text_tasks
    from online_select.config import load_config
    from online_select.tasks import build_task

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(6)) + " good movie ." for _ in range(200)]
    monkeypatch.setattr(text_tasks, "load_rotten_tomatoes", lambda source, hub_name, text_column, label_column: (texts, [1] * 200))
    encoder = _tiny_encoder(tmp_path / "encoder")

    def rt_task(*overrides):
        return build_task(load_config(ROOT / "recipes" / "rotten_tomatoes_noisy.yaml", [
            f"model.pretrained_path={encoder}", "data.extra.test_size=40", "data.max_length=16", *overrides]))

    task = rt_task("reference.kind=holdout", "data.holdout_fraction=0.25", "reference.model=bow", "reference.epochs=1")
    reference, _ = task.build_reference(0)
    held_out = set(task.holdout_ids.tolist())
    assert len(held_out) == 40
    loader = task.train_loader(8, 0)
    trained = {int(i) for _ in range(2 * 120 // 8) for i in next(loader)["id"]}
    assert trained == set(range(160)) - held_out  # two epochs of the 120 others, never a held-out id
    losses = reference.table
    assert bool(losses[task.trained_ids].isfinite().all()) and bool(losses[task.holdout_ids].isnan().all())
    fingerprint, other = task.reference_fingerprint(), rt_task("data.label_noise=0.5").reference_fingerprint()
    assert fingerprint["online_select.task"] == "rotten_tomatoes" and fingerprint["online_select.num_ids"] == "160"
    assert other["online_select.samples_sha256"] != fingerprint["online_select.samples_sha256"]
    cut = rt_task("data.max_train_samples=50")
    for field in ("labels", "noisy", "input_ids"):  # the first 50 rows, each with the label it has in the full run
        assert torch.equal(cut.train_fields[field], task.train_fields[field][:50])
    assert 0 < int(cut.train_fields["noisy"].sum()) < 50
