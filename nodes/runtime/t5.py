"""T5 v1.1 text encoders (the T5-XXL of FLUX and SD3): the offline tokenizer, the encoder built from a
state dict, and prompt encoding with ComfyUI's token and weight rules.

Tokenizer: ``data/t5-v1_1-tokenizer/tokenizer.json.gz`` (Apache-2.0, see the README there), loaded with
``tokenizers`` and the Metaspace ``prepend_scheme`` set to ``"first"`` as in ComfyUI's copy. ComfyUI's rules
(``T5XXLTokenizer``, an ``SDTokenizer`` without a start token): the prompt's weighted segments (the same
``(text:1.2)`` syntax as CLIP, :func:`text_encoding.parse_prompt_weights`) are tokenized one by one without
their end token, then one end token ``</s>`` (id 1) closes the whole sequence, which is padded with id 0 to at
least ``min_length`` (256 for FLUX, 77 for SD3). There is no 77-token chunking: a long prompt is one long
sequence. ``embedding:name`` inserts textual-inversion vectors of width 4096 (key ``t5xxl``).

Encoder: transformers' ``T5EncoderModel`` with the config read off the tensors (layers, ``d_model``,
``d_ff``, heads from the relative attention bias, ``d_kv``), ``encoder.embed_tokens`` tied to ``shared``, the
gated ``gelu_pytorch_tanh`` feed-forward, no attention mask (ComfyUI passes none). Weights stay in their
storage dtype (float16/bfloat16/fp8) and every layer computes in float32, as ComfyUI's ``manual_cast`` with
``dtype=torch.float32`` does. ComfyUI's scaled-fp8 files (a ``scaled_fp8`` marker, fp8 Linear weights each with
a scalar ``scale_weight``) compute ``fp8 value * scale`` per layer as its ``scaled_fp8_ops`` do. The output is the
last block's hidden state after the final layer norm; T5 has no pooled output.

Weights (ComfyUI's ``encode_token_weights``): when any token has a weight other than 1, the empty prompt
(``</s>`` then padding to the same length) is encoded alongside and each weighted token's vector becomes
``(z - z_empty) * w + z_empty``.
"""
from __future__ import annotations

import functools
import gzip
import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch

log = logging.getLogger(__name__)

TOKENIZER_FILE = Path(__file__).resolve().parent / "data" / "t5-v1_1-tokenizer" / "tokenizer.json.gz"

EOS_TOKEN = 1
PAD_TOKEN = 0
FLUX_MIN_LENGTH = 256
SD3_MIN_LENGTH = 77
EMBEDDING_KEY = "t5xxl"
EMBEDDING_SIZE = 4096
RELATIVE_ATTENTION_MAX_DISTANCE = 128  # fixed in every T5 config; not recorded in the weights
LAYER_NORM_EPSILON = 1e-6
FINAL_NORM = "encoder.final_layer_norm.weight"

Token = Union[int, torch.Tensor]
WeightedTokens = list[tuple[Token, float]]


class T5LoadError(ValueError):
    """A state dict that is not a T5 encoder Loom can build; the message says what was found."""


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def t5_tokenizer() -> Any:
    """A ``tokenizers.Tokenizer`` over the bundled T5 v1.1 vocabulary (built once per process)."""
    from tokenizers import Tokenizer

    if not TOKENIZER_FILE.is_file():
        raise FileNotFoundError(f"the T5 vocabulary {TOKENIZER_FILE} is missing from the Loom installation")
    spec = json.loads(gzip.decompress(TOKENIZER_FILE.read_bytes()).decode("utf-8"))
    for part in (spec.get("pre_tokenizer"), spec.get("decoder")):
        if isinstance(part, dict) and part.get("type") == "Metaspace":
            part["prepend_scheme"] = "first"
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    ids = tokenizer.encode("a photo of a cat", add_special_tokens=True).ids
    if ids != [3, 9, 1202, 13, 3, 9, 1712, EOS_TOKEN]:
        raise RuntimeError(f"the T5 tokenizer was built wrongly (got {ids} for a known prompt)")
    return tokenizer


def tokenize_words(text: str) -> list[int]:
    """Token ids of ``text`` without the end token (ComfyUI's ``tokenizer(word)["input_ids"][0:-1]``)."""
    ids = t5_tokenizer().encode(text, add_special_tokens=True).ids
    return ids[:-1]


_EMBEDDING_SPLIT = re.compile(r" embedding:|\nembedding:")


def tokenize(text: str, *, min_length: int | None = FLUX_MIN_LENGTH,
             embedding_dirs: Sequence[Path] | None = None,
             embedding_size: int = EMBEDDING_SIZE) -> WeightedTokens:
    """``(token, weight)`` pairs of a prompt: no start token, ``</s>`` at the end, padded with 0 to
    ``min_length``. A token is an id or a textual-inversion vector."""
    from loom.nodes.runtime import text_encoding

    tokens: WeightedTokens = []
    for segment, weight in text_encoding.parse_prompt_weights(text):
        parts = _EMBEDDING_SPLIT.split(segment)
        words = [parts[0]] + ["embedding:" + part for part in parts[1:]]
        for word in (w for w in words if w != ""):
            if word.startswith("embedding:"):
                pieces = word[len("embedding:"):].strip("\n").split()
                name, leftover = (pieces[0], " ".join(pieces[1:])) if pieces else ("", "")
                vectors = text_encoding.load_embedding(name, embedding_size, EMBEDDING_KEY, embedding_dirs)
                if vectors is None and name.strip(",") != name:
                    stripped = name.strip(",")
                    vectors = text_encoding.load_embedding(stripped, embedding_size, EMBEDDING_KEY, embedding_dirs)
                    leftover = f"{name[len(stripped):]} {leftover}"
                if vectors is None:
                    log.warning("embedding:%s does not exist, ignoring", name)
                else:
                    tokens.extend((vector, weight) for vector in vectors)
                if leftover == "":
                    continue
                word = leftover
            tokens.extend((token, weight) for token in tokenize_words(word))
    tokens.append((EOS_TOKEN, 1.0))
    if min_length is not None and len(tokens) < min_length:
        tokens.extend([(PAD_TOKEN, 1.0)] * (min_length - len(tokens)))
    return tokens


def empty_tokens(length: int) -> list[int]:
    """ComfyUI's ``gen_empty_tokens`` for T5: the end token, then padding."""
    return [EOS_TOKEN] + [PAD_TOKEN] * (length - 1)


# ---------------------------------------------------------------------------------------------
# The encoder
# ---------------------------------------------------------------------------------------------

def find_prefix(shapes: Mapping[str, Any]) -> str | None:
    """The key prefix of a T5 encoder in ``shapes`` (``""`` for a stand-alone file), or ``None``."""
    found = [key[:-len(FINAL_NORM)] for key in shapes if key.endswith(FINAL_NORM)]
    found = [p for p in found if p + "encoder.block.0.layer.0.SelfAttention.q.weight" in shapes]
    return min(found, key=len) if found else None


def config_from_shapes(shapes: Mapping[str, Sequence[int]], prefix: str = "") -> dict[str, Any]:
    """Keyword arguments for ``transformers.T5Config`` read off an encoder's tensors."""
    block = re.compile(re.escape(prefix) + r"encoder\.block\.(\d+)\.")
    layers = {int(m.group(1)) for key in shapes if (m := block.match(key))}
    if not layers:
        raise T5LoadError(f"no T5 encoder blocks under {prefix or 'the top level'!r} (expected "
                          f"{prefix}encoder.block.N.*)")
    if layers != set(range(len(layers))):
        raise T5LoadError(f"the T5 encoder's blocks are not numbered 0..{len(layers) - 1}: {sorted(layers)}")
    embedding = shapes.get(prefix + "shared.weight") or shapes.get(prefix + "encoder.embed_tokens.weight")
    bias = shapes.get(prefix + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    q = shapes.get(prefix + "encoder.block.0.layer.0.SelfAttention.q.weight")
    gated = prefix + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    wi = shapes.get(prefix + "encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight")
    for what, shape in (("shared.weight", embedding), ("the relative attention bias of block 0", bias),
                        ("SelfAttention.q.weight of block 0", q), ("DenseReluDense.wi of block 0", wi)):
        if shape is None:
            raise T5LoadError(f"the T5 encoder lacks {what}, which its architecture is read from")
    vocab, d_model = embedding
    buckets, heads = bias
    inner = q[0]
    if inner % heads:
        raise T5LoadError(f"the T5 attention width {inner} is not a multiple of its {heads} heads")
    return dict(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=wi[0], num_layers=len(layers),
                num_heads=heads, relative_attention_num_buckets=buckets,
                relative_attention_max_distance=RELATIVE_ATTENTION_MAX_DISTANCE, dropout_rate=0.0,
                layer_norm_epsilon=LAYER_NORM_EPSILON, feed_forward_proj="gated-gelu" if gated else "relu",
                is_encoder_decoder=False, use_cache=False, pad_token_id=PAD_TOKEN, eos_token_id=EOS_TOKEN)


def _make_config(kwargs: Mapping[str, Any]) -> Any:
    from transformers import T5Config

    config = T5Config(**kwargs)
    if config.is_gated_act:
        config.dense_act_fn = "gelu_pytorch_tanh"  # T5 v1.1 (transformers maps "gated-gelu" to gelu_new)
    return config


def _float32_feed_forward(model: torch.nn.Module) -> None:
    """transformers' feed-forward casts its hidden state to ``wo``'s storage dtype before ``wo``; with
    16-bit storage and float32 compute that would round it, so the block computes in float32 instead."""
    from transformers.models.t5 import modeling_t5

    class GatedFeedForward(modeling_t5.T5DenseGatedActDense):
        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            hidden = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
            return self.wo(self.dropout(hidden))

    class FeedForward(modeling_t5.T5DenseActDense):
        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return self.wo(self.dropout(self.act(self.wi(hidden_states))))

    for module in model.modules():
        if type(module) is modeling_t5.T5DenseGatedActDense:
            module.__class__ = GatedFeedForward
        elif type(module) is modeling_t5.T5DenseActDense:
            module.__class__ = FeedForward


def default_storage_dtype(file_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """16-bit and fp8 files keep their dtype; a float32 file is stored as the device's text-encoder dtype."""
    from loom.nodes.runtime import devices

    if file_dtype in (torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        return file_dtype
    return devices.text_encoder_dtype(device)


def build_encoder(tensors: Mapping[str, torch.Tensor], *, source: str = "T5", device: torch.device | str = "cpu",
                  storage_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``T5EncoderModel`` from a stand-alone T5 state dict (keys ``shared.weight``, ``encoder.*``).

    Every tensor of the state dict must fit the architecture read from it and every parameter must be given
    (``encoder.embed_tokens.weight`` is ``shared.weight``); the error names what is missing or left over.
    """
    from transformers import T5EncoderModel
    from loom.nodes.runtime import checkpoint, manual_cast

    device = torch.device(device)
    state = dict(tensors)
    scales: dict[str, torch.Tensor] = {}
    if "scaled_fp8" in state:  # ComfyUI's scaled fp8 (t5xxl_fp8_e4m3fn_scaled): weight * scale_weight per layer
        marker = state.pop("scaled_fp8")
        scales = {key[:-len(".scale_weight")]: state.pop(key) for key in list(state) if key.endswith(".scale_weight")}
        for key in [key for key in state if key.endswith(".scale_input")]:
            state.pop(key)  # only used by fp8 matrix multiplication, which needs fp8 compute hardware
        if marker.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise T5LoadError(f"{source}: its scaled_fp8 marker is {marker.dtype}, not an fp8 type")
    shared = state.get("shared.weight")
    tied = state.pop("encoder.embed_tokens.weight", None)
    if shared is None and tied is not None:
        state["shared.weight"] = shared = tied
    config = _make_config(config_from_shapes({k: tuple(v.shape) for k, v in state.items()}))
    if shared is None:
        raise T5LoadError(f"{source}: the T5 encoder has no shared.weight (token embedding)")
    if not scales:  # a scaled-fp8 file keeps every tensor as stored: the scales belong to the fp8 values
        dtype = storage_dtype or default_storage_dtype(shared.dtype, device)
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    state["encoder.embed_tokens.weight"] = state["shared.weight"]
    model = checkpoint._instantiate(T5EncoderModel, config)
    checkpoint._load_exact(model, state, "T5 text encoder", source)
    model.encoder.embed_tokens.weight = model.shared.weight
    _float32_feed_forward(model)
    manual_cast.compute_in(model, torch.float32)
    if scales:
        missing = sorted(set(scales) - {name for name, _ in model.named_modules()})
        if missing:
            raise T5LoadError(f"{source}: scale_weight tensors for layers the T5 does not have: {', '.join(missing[:5])}")
        manual_cast.scaled_linears(model, scales, torch.float32)
    return model.to(device)


def load_encoder(path: str | Path, *, device: torch.device | str = "cpu",
                 storage_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A stand-alone T5 encoder file (``t5xxl_fp16.safetensors``, ``t5xxl_fp8_e4m3fn[_scaled].safetensors``)."""
    from loom.nodes.runtime import checkpoint

    path = Path(path)
    with checkpoint.StateDictFile(path) as file:
        prefix = find_prefix(file.shapes)
        if prefix is None:
            raise T5LoadError(f"{path.name} is not a T5 encoder: it has no {FINAL_NORM}")
        tensors = file.read_prefixed(prefix, rename="")
    return build_encoder(tensors, source=path.name, device=device, storage_dtype=storage_dtype)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

def run_t5(model: torch.nn.Module, sequences: Sequence[Sequence[Token]]) -> torch.Tensor:
    """Hidden states ``[n, length, d_model]`` (float32, after the final layer norm) of equal-length
    token sequences; a token is an id or an embedding vector standing in for one."""
    embedding = model.shared
    device = embedding.weight.device
    ids = torch.tensor([[t if isinstance(t, int) else 0 for t in seq] for seq in sequences], device=device)
    with torch.no_grad():
        x = torch.nn.functional.embedding(ids, embedding.weight.to(torch.float32))
        for row, seq in enumerate(sequences):
            for col, token in enumerate(seq):
                if not isinstance(token, int):
                    x[row, col] = token.to(device=device, dtype=torch.float32)
        if embedding.weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.nan_to_num(x)  # ComfyUI's fix for fp8 T5 embeddings
        out = model(inputs_embeds=x, attention_mask=None)
    return out.last_hidden_state.float()


def encode_weighted(model: torch.nn.Module, tokens: WeightedTokens) -> torch.Tensor:
    """``[1, length, d_model]`` for one tokenized prompt, with ComfyUI's prompt weighting."""
    return encode_token_weights(model, [tokens])


def encode_token_weights(model: torch.nn.Module, sequences: Sequence[WeightedTokens]) -> torch.Tensor:
    """ComfyUI's ``encode_token_weights`` for T5: ``[1, total length, d_model]``.

    Each sequence is encoded (with the empty prompt of the longest length alongside when any weight is not 1,
    or when there is no sequence at all), weighted tokens are interpolated against the empty prompt, and the
    sequences are joined along the token axis; no sequence gives the encoding of the end token alone."""
    from loom.nodes.runtime import devices

    ids = [[token for token, _ in seq] for seq in sequences]
    longest = max((len(seq) for seq in ids), default=0)
    weighted = any(w != 1.0 for seq in sequences for _, w in seq)
    empty = empty_tokens(longest) if weighted or not ids else None
    where = devices.intermediate_device()
    z_empty = run_t5(model, [empty]).to(where) if empty is not None else None
    if not ids:
        return z_empty
    outputs = []
    for seq, row in zip(sequences, ids):
        z = run_t5(model, [row]).to(where)
        if weighted:
            w = torch.tensor([weight for _, weight in seq], dtype=torch.float32).view(1, -1, 1)
            base = z_empty[:, :z.shape[1]]
            z = torch.where(w != 1.0, (z - base) * w + base, z)
        outputs.append(z)
    return torch.cat(outputs, dim=-2)


# ---------------------------------------------------------------------------------------------
# The CLIP handle's seam: a tokenizer and an encoder object for TextEncoderModel.encoders
# ---------------------------------------------------------------------------------------------

class T5Tokenizer:
    """``tokenize_with_weights(text)`` → one weighted sequence (T5 has no chunks), padded to ``min_length``."""

    def __init__(self, min_length: int | None = FLUX_MIN_LENGTH) -> None:
        self.min_length = min_length

    def tokenize_with_weights(self, text: str) -> list[WeightedTokens]:
        """A list of one weighted sequence (ComfyUI's batch list; T5 is never split into chunks)."""
        from loom.nodes.runtime import text_encoding

        return [tokenize(text, min_length=self.min_length, embedding_dirs=text_encoding._embedding_dirs())]

    def __repr__(self) -> str:
        return f"T5Tokenizer(min_length={self.min_length})"


class T5TextEncoder(torch.nn.Module):
    """A built T5 encoder (``.model``) as a CLIP handle's encoder: ``encode_token_weights(tokens)`` →
    ``(hidden, None)``. A module, so the model cache counts its weights and weight patches can reach them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode_token_weights(self, sequences: Sequence[WeightedTokens]) -> tuple[torch.Tensor, None]:
        """``(hidden [1, n, d_model], None)``: T5 has no pooled output."""
        if sequences and isinstance(sequences[0], tuple):  # one flat sequence
            sequences = [list(sequences)]  # type: ignore[list-item]
        return encode_token_weights(self.model, sequences), None

    def extra_repr(self) -> str:
        config = self.model.config
        return f"{config.num_layers} blocks, d_model {config.d_model}"


def load_t5_from_file(file: Any, prefix: str, *, dtype: torch.dtype | None = None,
                      device: torch.device | str = "cpu", min_length: int | None = FLUX_MIN_LENGTH
                      ) -> tuple[T5Tokenizer, T5TextEncoder]:
    """``(tokenizer, encoder)`` for the T5 under ``prefix`` of an open :class:`checkpoint.StateDictFile`.

    The tensors are read in their stored dtype (the checkpoint loader prefetches T5 parts that way): a 16-bit
    or fp8 T5 stays so, since it computes in float32 anyway (same result, half the memory); ``dtype`` (the
    runtime's text-encoder dtype) applies to a float32 file only."""
    device = torch.device(device)
    tensors = file.read_prefixed(prefix, None, rename="")
    shared = tensors.get("shared.weight", tensors.get("encoder.embed_tokens.weight"))
    file_dtype = shared.dtype if shared is not None else torch.float32
    storage = dtype if dtype is not None and file_dtype == torch.float32 else default_storage_dtype(file_dtype, device)
    model = build_encoder(tensors, source=f"{Path(file.path).name} ({prefix or 'T5'})", device=device,
                          storage_dtype=storage)
    return T5Tokenizer(min_length), T5TextEncoder(model)
