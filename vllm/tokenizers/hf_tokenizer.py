"""Tokenizer from a checkpoint's `tokenizer.json` + `tokenizer_config.json` (HF `tokenizers` library)."""

from __future__ import annotations

import json
from pathlib import Path


class TokenizerError(ValueError):
    pass


class Tokenizer:
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as _Tok

        path = Path(path)
        if not (path / "tokenizer.json").exists():
            raise TokenizerError(f"{path}: no tokenizer.json; pass tokenizer=<dir> or skip_tokenizer_init=True")
        self._tok = _Tok.from_file(str(path / "tokenizer.json"))
        cfg_file = path / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        self.add_bos = bool(cfg.get("add_bos_token", False))
        self.bos_token_id = self._special_id(cfg.get("bos_token"))
        self.eos_token_id = self._special_id(cfg.get("eos_token"))
        self.vocab_size = self._tok.get_vocab_size()

    def _special_id(self, tok) -> int | None:
        if isinstance(tok, dict):
            tok = tok.get("content")
        return None if tok is None else self._tok.token_to_id(tok)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)
