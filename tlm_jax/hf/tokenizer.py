"""HF tokenizer files <-> our tokenizer (``tokenizer.json``/``vocab.txt`` in, BERT's files out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing

from tlm_jax.data.tokenizer import load_tokenizer, special_tokens
from tlm_jax.errors import TLMError


def import_tokenizer(src: Path) -> tuple[Any, bool, str]:
    """``(tokenizer in our form, lowercase, source file name)`` from an HF directory."""
    tc_path = src / "tokenizer_config.json"
    tc: dict[str, Any] = {}
    if tc_path.is_file():
        try:
            tc = json.loads(tc_path.read_text())
        except json.JSONDecodeError as e:
            raise TLMError(f"{tc_path} is not valid JSON", "restore the file") from e
    lowercase = bool(tc.get("do_lower_case", True))
    if (src / "tokenizer.json").is_file():
        name = "tokenizer.json"
        tok = load_tokenizer(src / name)
        norm = (json.loads(tok.to_str()).get("normalizer") or {})
        lowercase = bool(norm.get("lowercase", lowercase))
    elif (src / "vocab.txt").is_file():
        name = "vocab.txt"
        tok = load_tokenizer(src / name, lowercase=lowercase)
    else:
        raise TLMError(f"no tokenizer.json or vocab.txt in {src}",
                       "copy the checkpoint's tokenizer files next to config.json")
    tok.no_truncation()
    tok.no_padding()
    special_tokens(tok)  # refuses vocabularies without [PAD] [UNK] [CLS] [SEP] [MASK]
    return tok, lowercase, name


def vocab_list(tok: Any) -> list[str]:
    """Tokens by id; an id no token maps to (a duplicated vocab.txt line) gets ``[unusedN]``."""
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    n = max(tok.get_vocab_size(with_added_tokens=True), max(by_id, default=-1) + 1)
    return [by_id.get(i, f"[unused{i}]") for i in range(n)]


def export_tokenizer(tok: Any, out: Path, max_len: int) -> None:
    """Write ``vocab.txt``, ``tokenizer.json`` (BERT template), tokenizer config files."""
    sp = special_tokens(tok)
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab_list(tok)), encoding="utf-8")
    hf_tok = Tokenizer.from_str(tok.to_str())
    hf_tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", sp.cls), ("[SEP]", sp.sep)])
    hf_tok.no_truncation()
    hf_tok.no_padding()
    hf_tok.save(str(out / "tokenizer.json"))
    norm = json.loads(tok.to_str()).get("normalizer") or {}
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                "cls_token": "[CLS]", "mask_token": "[MASK]"}
    tc = {"tokenizer_class": "BertTokenizer", "do_lower_case": bool(norm.get("lowercase", True)),
          "strip_accents": norm.get("strip_accents"),
          "tokenize_chinese_chars": bool(norm.get("handle_chinese_chars", True)),
          "model_max_length": max_len, "clean_up_tokenization_spaces": False, **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
