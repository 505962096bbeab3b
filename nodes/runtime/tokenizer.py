"""The CLIP byte-pair tokenizer, built in-process from the vocabulary file that ships with Loom.

``data/bpe_simple_vocab_16e6.txt.gz`` is OpenAI CLIP's merges list (MIT, see
``data/LICENSE-CLIP-BPE.txt``). The vocabulary is derived from it the way OpenAI's
``simple_tokenizer.py`` does: the 256 byte symbols, the same with ``</w>``, one entry per merge,
then ``<|startoftext|>`` and ``<|endoftext|>`` — 49,408 tokens. No hub, no files written.

Every CLIP text encoder of the SD families (CLIP-L, OpenCLIP-H, OpenCLIP-bigG) uses this same
vocabulary; they differ only in the padding token, which the prompt encoder adds itself.
"""
from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import Any

VOCAB_FILE = Path(__file__).resolve().parent / "data" / "bpe_simple_vocab_16e6.txt.gz"

VOCAB_SIZE = 49408
BOS_TOKEN = 49406  # <|startoftext|>
EOS_TOKEN = 49407  # <|endoftext|>
MERGE_COUNT = VOCAB_SIZE - 256 - 256 - 2  # 48,894 merges after the header line


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte → printable-character table used by byte-level BPE."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


@functools.lru_cache(maxsize=1)
def vocabulary_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP vocabulary (token → id) and the ordered merge pairs."""
    if not VOCAB_FILE.is_file():
        raise FileNotFoundError(f"the CLIP vocabulary {VOCAB_FILE} is missing from the Loom installation")
    lines = gzip.decompress(VOCAB_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + MERGE_COUNT]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{VOCAB_FILE.name} gave {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def clip_tokenizer() -> Any:
    """A ``transformers.CLIPTokenizer`` over the bundled vocabulary (built once per process)."""
    from transformers import CLIPTokenizer

    vocab, merges = vocabulary_and_merges()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=1 << 30,  # chunking is ours
                              bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                              unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    ids = tokenizer("a photo of a cat")["input_ids"]
    if ids != [BOS_TOKEN, 320, 1125, 539, 320, 2368, EOS_TOKEN]:
        raise RuntimeError(f"the CLIP tokenizer was built wrongly (got {ids} for a known prompt)")
    return tokenizer


def tokenize_words(text: str) -> list[int]:
    """Token ids of ``text`` without the start and end tokens."""
    return clip_tokenizer()(text)["input_ids"][1:-1]
