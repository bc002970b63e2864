"""WordPiece tokenizers: train one (HF ``tokenizers``) or load ``tokenizer.json`` / ``vocab.txt``.

Tokenizers here never add special tokens themselves: the pipeline wraps
examples in [CLS] ... [SEP] so truncation and packing stay under its control.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from tlm_jax.errors import TLMError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

VOCAB_MULTIPLE = 128


def padded_vocab(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Round the embedding table up so it divides any tensor-parallel size up to ``multiple``.

    The extra rows are never inputs or targets; they only make the vocabulary axis shardable
    (and its matmul better shaped), as Megatron and MaxText do.
    """
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens of a vocabulary, and its size."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int
    vocab_size: int
    extra: tuple[int, ...] = ()

    @property
    def all(self) -> tuple[int, ...]:
        """Every special id (never masked, never a random replacement)."""
        return (self.pad, self.unk, self.cls, self.sep, self.mask, *self.extra)

    def ordinary_ids(self) -> np.ndarray:
        """Ids that are not special: the pool random replacements are drawn from."""
        keep = np.ones(self.vocab_size, bool)
        keep[list(self.all)] = False
        return np.nonzero(keep)[0].astype(np.int32)


def _bert_pipeline(tok: Tokenizer, lowercase: bool) -> Tokenizer:
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def train_wordpiece(docs: Iterable[str], vocab_size: int, *, lowercase: bool = True,
                    extra_special: Sequence[str] = ()) -> Tokenizer:
    """Train a BERT WordPiece vocabulary of ``vocab_size`` on ``docs`` (streamed)."""
    if vocab_size < len(SPECIAL_TOKENS) + 100:
        raise TLMError(f"data.vocab_size={vocab_size} is too small", "use at least 1000")
    tok = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100)),
                         lowercase)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, *extra_special],
        min_frequency=2, show_progress=False, continuing_subword_prefix="##")
    tok.train_from_iterator(docs, trainer=trainer)
    if tok.get_vocab_size() < 2 * len(SPECIAL_TOKENS):
        raise TLMError("the tokenizer training text is (nearly) empty",
                       "check data.paths and the subset settings")
    return tok


def load_tokenizer(path: str | Path, *, lowercase: bool = True) -> Tokenizer:
    """Load ``tokenizer.json`` or a BERT ``vocab.txt`` (one token per line)."""
    p = Path(path)
    if p.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (p / name).is_file():
                p = p / name
                break
    if not p.is_file():
        raise TLMError(f"tokenizer file {p} not found",
                       "point data.tokenizer at a tokenizer.json or vocab.txt, or use 'train'")
    if p.suffix == ".txt":
        vocab: dict[str, int] = {}
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
            token = line.rstrip("\n")
            if token and token not in vocab:
                vocab[token] = i
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise TLMError(f"{p} lacks special tokens {missing}", "use a BERT vocab.txt")
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
        return _bert_pipeline(tok, lowercase)
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # the Rust side raises a generic Exception
        raise TLMError(f"cannot read tokenizer {p}: {str(e).splitlines()[0]}",
                       "use a tokenizer.json saved by tokenizers/transformers") from e
    # A transformers tokenizer.json may carry a [CLS]/[SEP] post-processor; we add those ourselves.
    tok.post_processor = None
    return tok


def special_tokens(tok: Tokenizer, extra: Sequence[str] = ()) -> SpecialTokens:
    """The ids of [PAD] [UNK] [CLS] [SEP] [MASK] (+ ``extra``) in ``tok``."""
    ids = {}
    for t in (*SPECIAL_TOKENS, *extra):
        i = tok.token_to_id(t)
        if i is None:
            raise TLMError(f"tokenizer has no {t} token", "use a BERT-style vocabulary")
        ids[t] = i
    return SpecialTokens(ids["[PAD]"], ids["[UNK]"], ids["[CLS]"], ids["[SEP]"], ids["[MASK]"],
                         tok.get_vocab_size(), tuple(ids[t] for t in extra))


def tokenizer_hash(tok: Tokenizer) -> str:
    """A content hash of the tokenizer (vocabulary, normalizer, ...)."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def encode(tok: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text (no special tokens added); batched on Rust threads."""
    encs = tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encs]


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)
