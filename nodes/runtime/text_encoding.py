"""Prompt text → CONDITIONING, with ComfyUI's prompt syntax and CLIP conventions.

Prompt syntax (ComfyUI's ``sd1_clip``): ``(text)`` multiplies the weight by 1.1 per nesting level,
``(text:1.3)`` sets it, ``\\(`` and ``\\)`` are literal parentheses (square brackets mean nothing),
and ``embedding:name`` inserts a textual-inversion embedding from the ``embeddings`` folder. Text
longer than one window is split into chunks of 75 tokens plus start and end tokens, padded to 77,
encoded separately and concatenated along the token axis; a segment of 8 or more tokens is split
across chunks, a shorter one moves whole to the next chunk. Weights are applied after encoding as
``z_empty + (z - z_empty) * w`` against the encoding of the empty prompt.

Per text encoder (ComfyUI's choices, which the hidden state of a workflow depends on):

========  =============  =========  ==================  ===============  =====================
family    encoder        pad token  default layer        layer norm on    pooled output
                                                         hidden layer
========  =============  =========  ==================  ===============  =====================
sd1       CLIP-L "l"     49407      last                yes              unprojected
sd2       OpenCLIP-H "h" 0          penultimate (-2)    yes              projected
sdxl      CLIP-L "l"     49407      penultimate (-2)    no               (unused)
sdxl      bigG "g"       0          penultimate (-2)    no               projected (the model's)
refiner   bigG "g"       0          penultimate (-2)    no               projected
sd3       CLIP-L "l"     49407      penultimate (-2)    no               unprojected
sd3       CLIP-G "g"     0          penultimate (-2)    no               projected
========  =============  =========  ==================  ===============  =====================

Each family module (:mod:`nodes.runtime.families`) holds its row (``Family.text_convention``) and joins its
encoders' outputs (``Family.combine_text``). ``CLIPSetLastLayer`` (``TextEncoderModel.layer_idx``) replaces
the default layer of every encoder: ``-1`` is the last layer, ``-2`` the one before, ...; a value beyond the
encoder's depth means the last layer. SDXL concatenates the L and G hidden states on the feature axis; SD3
does too, zero-pads them to 4096 and appends T5's tokens (an encoder with its own
``encode_token_weights``, see :mod:`nodes.runtime.t5`), with L's and G's pooled outputs joined.
"""
from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch

from loom.nodes.runtime import devices, families
from loom.nodes.runtime.families.base import EncoderConvention
from loom.nodes.runtime.model_types import TextEncoderModel
from loom.nodes.runtime.tokenizer import BOS_TOKEN, EOS_TOKEN, tokenize_words

log = logging.getLogger(__name__)

MAX_LENGTH = 77
MAX_WORD_LENGTH = 8  # a segment this long may be split across two chunks
EMBEDDING_PREFIX = "embedding:"
EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")

Token = Union[int, torch.Tensor]
TokenChunk = list[tuple[Token, float]]


def convention(family: str, name: str) -> EncoderConvention:
    """How ``family`` reads its text encoder ``name`` (the family module decides)."""
    return families.get(family).text_convention(name)


# ---------------------------------------------------------------------------------------------
# Prompt parsing
# ---------------------------------------------------------------------------------------------

_ESCAPED_CLOSE, _ESCAPED_OPEN = "\0\1", "\0\2"


def _escape(text: str) -> str:
    return text.replace("\\)", _ESCAPED_CLOSE).replace("\\(", _ESCAPED_OPEN)


def _unescape(text: str) -> str:
    return text.replace(_ESCAPED_CLOSE, ")").replace(_ESCAPED_OPEN, "(")


def _split_parentheses(text: str) -> list[str]:
    """Top-level pieces: plain runs and balanced ``(...)`` groups (an unclosed group runs to the end)."""
    pieces: list[str] = []
    current = ""
    depth = 0
    for char in text:
        if char == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = "("
            else:
                current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def _weighted_segments(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _split_parentheses(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            inner_weight = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += _weighted_segments(inner, inner_weight)
        else:
            out.append((piece, weight))
    return out


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """``"a (red:1.3) fox"`` → ``[("a ", 1.0), ("red", 1.3), (" fox", 1.0)]`` (escapes resolved)."""
    return [(_unescape(segment), weight) for segment, weight in _weighted_segments(_escape(text), 1.0)]


# ---------------------------------------------------------------------------------------------
# Textual-inversion embeddings
# ---------------------------------------------------------------------------------------------

def _embedding_dirs() -> list[Path]:
    from loom.nodes.kernel import folders
    return [p for p in folders.current().model_paths("embeddings") if p.is_dir()]


def find_embedding_file(name: str, directories: Sequence[Path]) -> Path | None:
    """The file ``name`` (or ``name`` + a known extension) in the embeddings folders, never outside them."""
    from loom.nodes.kernel import folders

    for root in directories:
        for sub in [root] + sorted(p for p in root.rglob("*") if p.is_dir()):
            for candidate in [sub / name] + [sub / (name + ext) for ext in EMBEDDING_EXTENSIONS]:
                if candidate.is_file() and folders.inside(root, candidate):
                    return candidate
    return None


def load_embedding(name: str, size: int, key: str, directories: Sequence[Path] | None = None) -> torch.Tensor | None:
    """The ``[n, size]`` vectors of textual inversion ``name``, or ``None`` (with a warning) if unusable."""
    from loom.nodes.runtime import checkpoint

    directories = _embedding_dirs() if directories is None else directories
    path = find_embedding_file(name, directories)
    if path is None:
        return None
    try:
        data: Any = checkpoint.read_state_dict(path) if path.suffix.lower() in (".safetensors", ".sft") else \
            _read_pickled_embedding(path)
    except Exception as exc:
        log.warning("could not read embedding %s: %s", path.name, exc)
        return None
    vectors = _embedding_vectors(data, key)
    if vectors is None:
        log.warning("embedding %s holds no usable vectors", path.name)
        return None
    vectors = vectors.reshape(-1, vectors.shape[-1]).float()
    if vectors.shape[-1] != size:
        log.warning("embedding %s has width %d, the text encoder needs %d: ignored", path.name,
                    vectors.shape[-1], size)
        return None
    return vectors


def _read_pickled_embedding(path: Path) -> Any:
    from loom.nodes.kernel import config
    from loom.nodes.runtime import checkpoint
    if not config.current().allow_pickle:
        raise checkpoint.CheckpointError(f"{path.name} is pickled; start Loom with --allow-pickle to use it")
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _embedding_vectors(data: Any, key: str) -> torch.Tensor | None:
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):  # A1111 .pt format
        return next(iter(data["string_to_param"].values()), None)
    if isinstance(data, dict):
        if key in data:
            return data[key]
        bundled = [v for k, v in data.items() if k.startswith("bundle_emb.") and k.endswith(".string_to_param.*")]
        if bundled:
            return torch.cat(bundled, dim=0)
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        return tensors[0] if tensors else None
    return None


# ---------------------------------------------------------------------------------------------
# Tokenising into 77-token chunks
# ---------------------------------------------------------------------------------------------

_EMBEDDING_SPLIT = re.compile(" {0}|\n{0}".format(re.escape(EMBEDDING_PREFIX)))


def tokenize(text: str, *, pad_token: int, embedding_size: int, embedding_key: str,
             embedding_dirs: Sequence[Path] | None = None) -> list[TokenChunk]:
    """Chunks of 77 ``(token, weight)`` pairs; a token is an id or an embedding vector."""
    groups: list[list[tuple[Token, float]]] = []
    for segment, weight in parse_prompt_weights(text):
        parts = _EMBEDDING_SPLIT.split(segment)
        words = [parts[0]] + [EMBEDDING_PREFIX + part for part in parts[1:]]
        for word in (w for w in words if w != ""):
            if word.startswith(EMBEDDING_PREFIX):
                parts = word[len(EMBEDDING_PREFIX):].strip("\n").split()
                name, leftover = (parts[0], " ".join(parts[1:])) if parts else ("", "")
                vectors = load_embedding(name, embedding_size, embedding_key, embedding_dirs)
                if vectors is None and name.strip(",") != name:
                    stripped = name.strip(",")
                    vectors = load_embedding(stripped, embedding_size, embedding_key, embedding_dirs)
                    leftover = f"{name[len(stripped):]} {leftover}"
                if vectors is None:
                    log.warning("embedding:%s does not exist, ignoring", name)
                else:
                    groups.append([(vector, weight) for vector in vectors])
                if leftover == "":
                    continue
                word = leftover
            groups.append([(token, weight) for token in tokenize_words(word)])
    return _chunk(groups, pad_token)


def _chunk(groups: list[list[tuple[Token, float]]], pad_token: int) -> list[TokenChunk]:
    chunks: list[TokenChunk] = []
    chunk: TokenChunk = [(BOS_TOKEN, 1.0)]
    chunks.append(chunk)
    room = MAX_LENGTH - 1  # one place for the end token
    for group in groups:
        is_large = len(group) >= MAX_WORD_LENGTH
        while group:
            if len(group) + len(chunk) > room:
                remaining = room - len(chunk)
                if is_large:
                    chunk.extend(group[:remaining])
                    chunk.append((EOS_TOKEN, 1.0))
                    group = group[remaining:]
                else:
                    chunk.append((EOS_TOKEN, 1.0))
                    chunk.extend([(pad_token, 1.0)] * remaining)
                chunk = [(BOS_TOKEN, 1.0)]
                chunks.append(chunk)
            else:
                chunk.extend(group)
                group = []
    chunk.append((EOS_TOKEN, 1.0))
    chunk.extend([(pad_token, 1.0)] * (MAX_LENGTH - len(chunk)))
    return chunks


def empty_chunk(pad_token: int, length: int = MAX_LENGTH) -> list[int]:
    return [BOS_TOKEN, EOS_TOKEN] + [pad_token] * (length - 2)


# ---------------------------------------------------------------------------------------------
# Running the text encoder
# ---------------------------------------------------------------------------------------------

def run_clip(model: Any, chunks: Sequence[Sequence[Token]], layer: int | None, layer_norm_hidden: bool,
             projected_pooled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states ``[n, 77, width]`` at ``layer`` and pooled outputs ``[n, dim]`` of token chunks.

    ``model`` is a transformers ``CLIPTextModel`` or ``CLIPTextModelWithProjection``; the forward is
    written out here so that embedding vectors can stand in for tokens and any layer can be read,
    with the causal mask ComfyUI uses.
    """
    text = getattr(model, "text_model", model)
    embeddings = text.embeddings
    weight = embeddings.token_embedding.weight
    device, dtype = weight.device, weight.dtype

    ids = torch.tensor([[t if isinstance(t, int) else 0 for t in chunk] for chunk in chunks], device=device)
    x = embeddings.token_embedding(ids)
    for row, chunk in enumerate(chunks):
        for col, token in enumerate(chunk):
            if not isinstance(token, int):
                x[row, col] = token.to(device=device, dtype=dtype)
    length = x.shape[1]
    x = x + embeddings.position_embedding.weight[:length].unsqueeze(0)

    mask = torch.full((length, length), -torch.finfo(dtype).max, dtype=dtype, device=device).triu_(1)
    mask = mask[None, None]
    layers = text.encoder.layers
    target = None if layer is None or abs(layer) > len(layers) else len(layers) + layer if layer < 0 else layer
    hidden = None
    for index, block in enumerate(layers):
        x = block(x, mask)
        if isinstance(x, tuple):  # older transformers return (hidden, attentions)
            x = x[0]
        if index == target:
            hidden = x
    last = text.final_layer_norm(x)
    if hidden is None:
        z = last
    else:
        z = text.final_layer_norm(hidden) if layer_norm_hidden else hidden
    eos_positions = (ids == EOS_TOKEN).int().argmax(dim=-1)
    pooled = last[torch.arange(last.shape[0], device=device), eos_positions]
    if projected_pooled and hasattr(model, "text_projection"):
        pooled = model.text_projection(pooled)
    return z.float(), pooled.float()


def _encode_weighted(model: Any, chunks: list[TokenChunk], conv: EncoderConvention, layer: int | None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's ``encode_token_weights``: encode the chunks (plus the empty prompt when weighted)."""
    tokens = [[token for token, _ in chunk] for chunk in chunks]
    weights = torch.tensor([[w for _, w in chunk] for chunk in chunks], dtype=torch.float32)
    weighted = bool((weights != 1.0).any())
    batch = tokens + ([empty_chunk(conv.pad_token, len(tokens[0]))] if weighted else [])
    z, pooled = run_clip(model, batch, layer, conv.layer_norm_hidden, conv.projected_pooled)
    z = z.to(devices.intermediate_device())
    pooled = pooled.to(devices.intermediate_device())
    out = z[:len(chunks)]
    if weighted:
        z_empty = z[-1:]
        w = weights.unsqueeze(-1)
        out = torch.where(w != 1.0, (out - z_empty) * w + z_empty, out)
    return out.reshape(1, -1, out.shape[-1]), pooled[0:1]


def encode_tokens(clip: TextEncoderModel, tokens: dict[str, list[TokenChunk]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cond [1, 77*chunks, width], pooled [1, dim])`` from :func:`tokenize_for`'s output."""
    cond, pooled, _extra = encode_tokens_extra(clip, tokens)
    return cond, pooled


def encode_tokens_extra(clip: TextEncoderModel, tokens: dict[str, Any]
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(cond, pooled, extra options)``: each encoder's output, joined as the CLIP's family does.

    A CLIP encoder is run here with its family's convention; an encoder object with its own
    ``encode_token_weights(tokens) -> (hidden, pooled)`` (T5) is called with its own tokens."""
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    family = families.get(clip.family)
    with torch.no_grad(), patches_applied(clip):
        for name, (_tokenizer, model) in clip.encoders.items():
            if not tokens.get(name):  # an encoder given no tokens (CLIPTextEncodeSD3's empty prompts) is left out
                continue
            if hasattr(model, "encode_token_weights"):
                hidden, pooled = model.encode_token_weights(tokens[name])[:2]
                outputs[name] = (hidden.to(devices.intermediate_device()), pooled)
                continue
            conv = family.text_convention(name)
            layer = conv.default_layer if clip.layer_idx is None else clip.layer_idx
            outputs[name] = _encode_weighted(model, tokens[name], conv, layer)
    return family.combine_text(outputs)


def tokenize_for(clip: TextEncoderModel, text: str) -> dict[str, list[TokenChunk]]:
    """Token chunks of ``text`` for each of the CLIP handle's encoders."""
    dirs = _embedding_dirs()
    out: dict[str, Any] = {}
    for name, (tokenizer, model) in clip.encoders.items():
        if hasattr(tokenizer, "tokenize_with_weights"):  # a non-CLIP encoder (T5) tokenises for itself
            out[name] = tokenizer.tokenize_with_weights(text)
            continue
        conv = convention(clip.family, name)
        width = getattr(model, "text_model", model).embeddings.token_embedding.weight.shape[1]
        out[name] = tokenize(text, pad_token=conv.pad_token, embedding_size=width, embedding_key=conv.embedding_key,
                             embedding_dirs=dirs)
    return out


def encode_text(clip: TextEncoderModel, text: str) -> list[list[Any]]:
    """``CONDITIONING`` for a prompt: ``[[cond, {"pooled_output": pooled}]]``."""
    if clip is None:
        raise ValueError("clip input is invalid: None. If the clip is from a checkpoint loader node, the "
                         "checkpoint does not contain a valid text encoder.")
    cond, pooled, extra = encode_tokens_extra(clip, tokenize_for(clip, text))
    return [[cond, {"pooled_output": pooled, **extra}]]


@contextlib.contextmanager
def patches_applied(clip: TextEncoderModel) -> Iterator[None]:
    """Enter each patch's ``applied(clip)`` context (weight patches such as LoRA) while encoding.

    A patch object in ``TextEncoderModel.patches`` provides ``applied(handle)``: a context manager that
    changes the encoders' weights on entry and restores them on exit.
    """
    with contextlib.ExitStack() as stack:
        for patch in clip.patches:
            applied = getattr(patch, "applied", None)
            if applied is None:
                raise TypeError(f"text encoder patch {patch!r} has no applied() context")
            stack.enter_context(applied(clip))
        yield
