"""WordPiece tokenizers: train one (HF ``tokenizers``) or load ``tokenizer.json`` / ``vocab.txt``.

Tokenizers here never add special tokens themselves: the pipeline wraps
examples in [CLS] ... [SEP] so truncation and packing stay under its control.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from tlm_jax.errors import TLMError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION = "##"  # WordPiece's prefix of a token that continues a word

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
                    extra_special: Sequence[str] = (), workdir: str | Path | None = None) -> Tokenizer:
    """Train a BERT WordPiece vocabulary of ``vocab_size`` on ``docs`` (read once, streamed).

    The result is a pure function of the text and the settings: the same ``tokenizer.json``,
    byte for byte, from any process on any machine. HF's trainer alone is not: it numbers the
    continuation characters (``##e``) in hash-map order and breaks ties between equally
    frequent pairs by token id, so two trainings give other ids and, where tied pairs overlap,
    other tokens. Here the alphabet and every ``##c`` get their ids before training (handed to
    the trainer as reserved tokens, each group by code point, as it numbers the alphabet), so
    every tie-break and so the token set is reproducible: the trainer's own outcome for one
    fixed hash-map order. The vocabulary is then renumbered by :func:`canonical_wordpiece`.

    The text is spooled to a temporary file under ``workdir`` (default: the system's), as it
    is read more than once.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 100:
        raise TLMError(f"data.vocab_size={vocab_size} is too small", "use at least 1000")
    specials = [*SPECIAL_TOKENS, *extra_special]
    with tempfile.TemporaryDirectory(prefix="wordpiece-", dir=workdir) as tmp:
        spool = Path(tmp) / "text.txt"
        raw_chars = _spool(docs, spool)
        probe = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")), lowercase)
        alphabet, pinned = _alphabet(probe, raw_chars)
        reserved = [*specials, *(c for c in alphabet if c not in specials)]
        # The budget leaves room for pins that turn out unused: training is sequential, so a
        # bigger budget only appends merges, and the cut below restores the requested size.
        tok = _train(spool, vocab_size + len(pinned), lowercase, reserved, pinned)
        missing = _continuation_tokens_of(tok) - set(pinned)
        if missing:  # not foreseen by the probe; the set depends on the words only: once suffices
            pinned = sorted({*pinned, *missing})
            tok = _train(spool, vocab_size + len(pinned), lowercase, reserved, pinned)
        unused = _unused_pins(probe, spool, tok, specials, pinned, raw_chars)
    tokens = _cut(tok.get_vocab(with_added_tokens=False), specials, set(pinned), unused, vocab_size)
    if len(tokens) < 2 * len(SPECIAL_TOKENS):
        raise TLMError("the tokenizer training text is (nearly) empty",
                       "check data.paths and the subset settings")
    return _rebuild(tok, tokens, specials)


def _spool(docs: Iterable[str], path: Path) -> set[str]:
    """Write ``docs`` to ``path``, one or more lines each, and return their distinct characters.

    The trainer counts whitespace-separated words, so the newline between documents changes
    nothing it sees.
    """
    chars: set[str] = set()
    with open(path, "w", encoding="utf-8", newline="") as f:
        for doc in docs:
            chars.update(doc)
            f.write(doc)
            f.write("\n")
    return chars


def _words(probe: Tokenizer, text: str) -> list[str]:
    """The words of ``text`` once normalized and pre-tokenized, as the trainer counts them."""
    assert probe.normalizer is not None and probe.pre_tokenizer is not None  # _bert_pipeline's
    return [w for w, _ in probe.pre_tokenizer.pre_tokenize_str(probe.normalizer.normalize_str(text))]


def _alphabet(probe: Tokenizer, chars: Iterable[str]) -> tuple[list[str], list[str]]:
    """The trainer's alphabet for a text of these distinct characters, and its ``##c`` tokens.

    The alphabet: every character of a word after ``probe``'s normalizer and pre-tokenizer.
    The ``##c``: every ``c`` those let follow a letter inside a word (whitespace, punctuation
    and CJK characters are split off). Both sorted by code point. Asked once per distinct
    character: exact for BERT's per-character normalization, and microseconds where
    pre-tokenizing the whole text in Python would take as long as training. A few ``c`` may
    still never follow another character in this text (:func:`_unused_pins`).
    """
    alphabet: set[str] = set()
    following: set[str] = set()
    for c in chars:
        alphabet.update(*_words(probe, c))
        following.update(*(w[1:] for w in _words(probe, "x" + c)))
    return sorted(alphabet), sorted(CONTINUATION + c for c in following)


def _continuation_tokens_of(tok: Tokenizer) -> set[str]:
    """The one-character continuation tokens (``##c``) of a trained vocabulary."""
    n = len(CONTINUATION) + 1
    return {t for t in tok.get_vocab(with_added_tokens=False)
            if len(t) == n and t.startswith(CONTINUATION)}


def _train(spool: Path, budget: int, lowercase: bool, reserved: list[str],
           pinned: list[str]) -> Tokenizer:
    """HF's WordPiece trainer on the spooled text, ``reserved`` then ``pinned`` taking the first ids.

    The trainer numbers its special tokens first and then reuses, rather than numbers anew, a
    character or ``##c`` already in its vocabulary: that is what fixes their ids.
    """
    tok = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100)),
                         lowercase)
    trainer = trainers.WordPieceTrainer(
        vocab_size=budget, special_tokens=[*reserved, *pinned], min_frequency=2,
        show_progress=False, continuing_subword_prefix=CONTINUATION)
    tok.train([str(spool)], trainer=trainer)
    return tok


def _unused_pins(probe: Tokenizer, spool: Path, tok: Tokenizer, specials: list[str],
                 pinned: list[str], raw_chars: set[str]) -> set[str]:
    """The pinned ``##c`` whose ``c`` never continues a word of the spooled text.

    HF's trainer would not have made these tokens, and no merge can involve them. A character
    inside a merged token is known to continue words; only the rest are looked up, exactly
    (the trainer's normalizer and pre-tokenizer, line by line as it reads the file), on the
    lines holding a character that normalizes to one of them.
    """
    skip = {*pinned, *specials}
    seen: set[str] = set()
    for t in tok.get_vocab(with_added_tokens=False):
        if len(t) > 1 and t not in skip:
            seen.update(t[len(CONTINUATION):] if t.startswith(CONTINUATION) else t[1:])
    unsure = {p[len(CONTINUATION):] for p in pinned} - seen
    raw = sorted(r for r in raw_chars if unsure.intersection("".join(_words(probe, r))))
    if raw:
        hit = re.compile("[" + "".join(re.escape(r) for r in raw) + "]")
        with open(spool, encoding="utf-8", newline="\n") as f:  # the trainer's lines: split at \n
            for line in f:
                if hit.search(line):
                    unsure.difference_update(*(w[1:] for w in _words(probe, line)))
                    if not unsure:
                        break
    return {CONTINUATION + c for c in unsure}


def _cut(vocab: dict[str, int], specials: list[str], pinned: set[str], unused: set[str],
         vocab_size: int) -> set[str]:
    """The tokens HF's trainer makes with budget ``vocab_size``: the specials, the alphabet and
    the used ``##c`` (all kept whatever the budget, as the trainer does), then the merges in
    the order it made them (its ids) up to the budget."""
    base = {t for t in vocab if t in specials or len(t) == 1 or (t in pinned and t not in unused)}
    merges = sorted((t for t in vocab if t not in base and t not in pinned), key=vocab.__getitem__)
    return base | set(merges[:max(0, vocab_size - len(base))])


def canonical_wordpiece(tok: Tokenizer, specials: Sequence[str] = SPECIAL_TOKENS) -> Tokenizer:
    """``tok`` (a WordPiece tokenizer) with its vocabulary renumbered in a canonical order.

    ``specials`` first, in their order (and the only added tokens), then every other token by
    (continuation or not, length, text): an order of the token *set* alone, so the ids do not
    depend on the trainer's internals. WordPiece encodes by greedy longest match over the set,
    so every text gives the same token strings as before, under the new ids.
    """
    return _rebuild(tok, set(tok.get_vocab(with_added_tokens=False)), specials)


def _rebuild(tok: Tokenizer, tokens: set[str], specials: Sequence[str]) -> Tokenizer:
    """A WordPiece tokenizer over ``tokens`` in canonical order, with ``tok``'s pipeline."""
    missing = [t for t in specials if t not in tokens]
    if missing:
        raise TLMError(f"tokenizer has no {missing} tokens", "use a BERT-style vocabulary")
    model = tok.model
    prefix = model.continuing_subword_prefix
    rest = sorted(tokens - set(specials), key=lambda t: (t.startswith(prefix), len(t), t))
    out = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate([*specials, *rest])},
                                     unk_token=model.unk_token, continuing_subword_prefix=prefix,
                                     max_input_chars_per_word=model.max_input_chars_per_word))
    out.normalizer, out.pre_tokenizer, out.decoder = tok.normalizer, tok.pre_tokenizer, tok.decoder
    out.add_special_tokens(list(specials))
    return out


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
