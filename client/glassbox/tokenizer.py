"""The model's tokenizer, as the server runs it.

Decoding happens here, from the vocabulary the service sends with the model's catalogue
(each token in GPT-2's byte-level form, or SentencePiece's with "▁" for a space and <0xNN>
byte tokens; special tokens literally). Encoding is done by the
server itself — through the service, a ``tokenize`` message a worker of the model answers
at once (never queued behind other users' jobs); elsewhere one tiny request that reads the
token ids the engine gives the text — so ``model.tokenizer.encode(text)`` can never disagree
with what a trace of ``text`` sees.
Encodings are cached per text. Chat templates come from the model's files through the
catalogue and are rendered here (glassbox.chat_template), as transformers renders them.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from . import _wire as wire
from . import chat_template as _chat_template
from .errors import GlassboxError


# SentencePiece's byte-fallback tokens: <0x41> stands for the byte 0x41.
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> Dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the character standing for each byte."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


class Tokenizer:
    """Decodes ids like the server; encodes by asking the server.

    ``info`` is the catalogue's ``tokenizer`` entry; ``run_request`` runs a wire.Request and
    returns its wire.Result (the model's backend); ``model_name`` names the model in it.
    ``encode_text`` (the service's ``tokenize``, optional) gives a text's ids without a job;
    without it, encoding runs a tiny request.
    """

    def __init__(self, info: dict, run_request: Callable[[wire.Request], wire.Result],
                 model_name: str,
                 encode_text: Optional[Callable[[str], List[int]]] = None):
        self._tokens: List[str] = list(info["tokens"])
        self._kind: str = info.get("kind", "byte_level_bpe")
        if self._kind not in ("byte_level_bpe", "sentencepiece_bpe"):
            raise GlassboxError("UNIMPLEMENTED", f"model {model_name}: tokenizer kind "
                                f"{self._kind!r} is not one this client decodes (byte_level_bpe, "
                                "sentencepiece_bpe); upgrade the client")
        self._strip = int(info.get("strip_leading_spaces", 0))
        self._special = set(int(i) for i in info.get("special_ids", []))
        self.bos_token_id: Optional[int] = _optional_id(info.get("bos_id"))
        self.eos_token_id: Optional[int] = _optional_id(info.get("eos_id"))
        self.chat_template: Optional[str] = info.get("chat_template") or None
        self.bos_token: Optional[str] = info.get("bos_token") or None
        self.eos_token: Optional[str] = info.get("eos_token") or None
        self._run = run_request
        self._encode_text = encode_text
        self._model_name = model_name
        self._encoded: Dict[str, List[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> List[str]:
        """Each id's token as Hugging Face shows it (``"ĠParis"``, or ``"▁Paris"``)."""
        return [self._tokens[self._check(i)] for i in ids]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (a token may hold part of a UTF-8 character)."""
        text = self._tokens[self._check(token_id)]
        if token_id in self._special:
            return text.encode("utf-8")
        if self._kind == "sentencepiece_bpe":
            byte = _BYTE_TOKEN.fullmatch(text)  # byte fallback: <0x41>
            return bytes([int(byte.group(1), 16)]) if byte else text.replace("\u2581", " ").encode("utf-8")
        table = _byte_level_decoder()
        return bytes(table[c] for c in text)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; bytes that are not valid UTF-8 become U+FFFD, as in the
        server and in Hugging Face."""
        ids = [int(i) for i in _flatten(ids)]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special]
        text = b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")
        for _ in range(self._strip):  # SentencePiece decoders that strip the leading space
            text = text[1:] if text.startswith(" ") else text
        return text

    def batch_decode(self, sequences: Iterable[Sequence[int]], **kwargs) -> List[str]:
        return [self.decode(s, **kwargs) for s in sequences]

    def encode(self, text: str) -> List[int]:
        """The token ids the server gives ``text`` in a trace (special tokens written in the
        text become their ids). One small request per new text; cached."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, not {type(text).__name__}")
        if text not in self._encoded:
            self._encoded[text] = self._encode_on_server(text) if text else []
        return list(self._encoded[text])

    def __call__(self, text: str) -> dict:
        return {"input_ids": self.encode(text)}

    def apply_chat_template(self, conversation, add_generation_prompt: bool = False,
                            tokenize: bool = True, return_dict: bool = False,
                            chat_template: Optional[str] = None, tools: Optional[list] = None,
                            documents: Optional[list] = None, **kwargs):
        """The conversation (a list of {"role", "content"} dicts, or a list of such lists)
        rendered by the model's chat template as transformers renders it, with
        ``bos_token``, ``eos_token`` and ``kwargs`` visible to the template. ``tokenize``:
        its token ids as the server encodes the text (special tokens are not added again;
        ``return_dict=True`` gives ``{"input_ids": ids}``); otherwise the text.
        ``chat_template`` renders another template instead of the model's."""
        template = chat_template or self.chat_template
        if template is None:
            raise GlassboxError("NOT_FOUND", f"model {self._model_name} has no chat template: "
                                "its files carry none (no tokenizer.chat_template in the GGUF, "
                                "no chat_template in tokenizer_config.json or "
                                "chat_template.jinja); pass chat_template=... to use one")
        if isinstance(conversation, (list, tuple)) and not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation.")
        batched = isinstance(conversation[0], (list, tuple))
        conversations = list(conversation) if batched else [conversation]
        special = {k: v for k, v in (("bos_token", self.bos_token),
                                     ("eos_token", self.eos_token)) if v is not None}
        texts = _chat_template.render(template, conversations, add_generation_prompt, tools,
                                      documents, {**special, **kwargs})
        if not tokenize:
            return texts if batched else texts[0]
        ids = [self.encode(text) for text in texts]
        out = ids if batched else ids[0]
        return {"input_ids": out} if return_dict else out

    def _encode_on_server(self, text: str) -> List[int]:
        if self._encode_text is not None:
            try:
                return list(self._encode_text(text))
            except GlassboxError as e:
                if not _tokenize_unsupported(e):
                    raise
                self._encode_text = None  # an older broker or worker: encode with a job
        read = wire.Node(0, "read", [], {"point": "model.embed_tokens.input", "invoke": 0})
        save = wire.Node(1, "save", [wire.Ref(0)], {"name": "ids"})
        trace = wire.Trace(invokes=[wire.Invoke(prompt=text)], nodes=[read, save])
        result = self._run(wire.Request(self._model_name, [trace]))
        for saved in result.saved:
            if saved.name == "ids":
                return [int(i) for i in saved.value.reshape(-1).tolist()]
        raise GlassboxError("INTERNAL", "the server returned no token ids for the text")

    def _check(self, token_id: int) -> int:
        if not 0 <= int(token_id) < len(self._tokens):
            raise ValueError(f"token id {token_id} is outside the vocabulary "
                             f"[0, {len(self._tokens)})")
        return int(token_id)


def _tokenize_unsupported(error: GlassboxError) -> bool:
    """An older broker refuses the message type; an older worker never answers it."""
    return ((error.code == "INVALID_ARGUMENT" and "unknown message type" in error.message)
            or (error.code == "UNAVAILABLE" and "did not tokenize" in error.message))


def _optional_id(value) -> Optional[int]:
    return None if value is None or int(value) < 0 else int(value)


def _flatten(ids) -> list:
    """Accepts a list of ints, or a numpy array / tensor of any shape holding one sequence."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    out = []
    for item in ids:
        out.extend(_flatten(item) if isinstance(item, (list, tuple)) else [item])
    return out
