"""A pre-norm Transformer encoder-decoder with an incremental-decoding cache."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdmt.config import option
from kdmt.errors import KdmtError
from kdmt.options import COUNT, FRACTION, flag
from kdmt.vocab import PAD


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved inside each checkpoint."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    share_embeddings: bool = True  # one embedding for source, target and output (joint vocabulary)
    max_positions: int = 1024


PRESETS: dict[str, dict[str, int | float]] = {
    "tiny": dict(d_model=64, n_heads=4, enc_layers=2, dec_layers=2, d_ff=256, dropout=0.1),
    "small": dict(d_model=256, n_heads=4, enc_layers=3, dec_layers=3, d_ff=1024, dropout=0.1),
    "base": dict(d_model=512, n_heads=8, enc_layers=6, dec_layers=6, d_ff=2048, dropout=0.1),
}


def make_config(src_vocab_size: int, tgt_vocab_size: int, preset: str = "small", **overrides) -> ModelConfig:
    """A config from a named preset, with explicit dimensions (those not None) overriding it."""
    if preset not in PRESETS:
        raise KdmtError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    known = {f.name for f in fields(ModelConfig)}
    if unknown := set(values) - known:
        raise KdmtError(f"unknown model settings: {', '.join(sorted(unknown))}")
    config = ModelConfig(src_vocab_size, tgt_vocab_size, **values)
    if config.d_model % config.n_heads:
        raise KdmtError(f"d_model {config.d_model} is not divisible by n_heads {config.n_heads}")
    return config


@dataclass(frozen=True)
class Architecture:
    """A model's size as a command asks for it: a preset, and the dimensions that override it (None: the
    preset's); each one an option of train-teacher and train-student (kdmt.config)."""

    preset: str = option("small", "Model size: tiny, small or base.")
    d_model: int | None = option(None, "Override the preset.", COUNT)
    n_heads: int | None = option(None, "Override the preset.", COUNT)
    enc_layers: int | None = option(None, "Override the preset.", COUNT)
    dec_layers: int | None = option(None, "Override the preset.", COUNT)
    d_ff: int | None = option(None, "Override the preset.", COUNT)
    dropout: float | None = option(None, "Override the preset's dropout.", FRACTION)

    def config(self, src_vocab_size: int, tgt_vocab_size: int, share_embeddings: bool) -> ModelConfig:
        dims = {k: v for k, v in asdict(self).items() if k != "preset"}
        return make_config(src_vocab_size, tgt_vocab_size, self.preset, share_embeddings=share_embeddings, **dims)

    def resumed(self, saved: ModelConfig, saved_preset: str | None, given: Collection[str]) -> ModelConfig:
        """A resumed run's model: its checkpoint's; an option `given` (on the command line or in a --config
        file) that differs from the checkpoint is refused."""
        saved_values = asdict(saved) | {"preset": saved_preset}
        conflicts = [
            f"{flag(name)} {getattr(self, name)} (the checkpoint's: {saved_values[name]})"
            for name in given
            if getattr(self, name) != saved_values[name]
        ]
        if conflicts:
            raise KdmtError(
                f"the run to resume has another model: {', '.join(conflicts)}; --resume takes the checkpoint's, "
                "drop these options"
            )
        return saved


def sinusoids(length: int, dim: int) -> Tensor:
    """Fixed sinusoidal position encodings (Vaswani et al. 2017), (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def heads(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T, D/H)"""
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.k(x)), self.heads(self.v(x))

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(self.heads(self.q(x)), k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        return self.out(y.transpose(1, 2).flatten(2))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class EncoderLayer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(c.d_model), Attention(c.d_model, c.n_heads, c.dropout)
        self.norm2, self.ff = nn.LayerNorm(c.d_model), FeedForward(c.d_model, c.d_ff, c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, *self.attn.keys_values(h), mask=mask))
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(c.d_model), Attention(c.d_model, c.n_heads, c.dropout)
        self.norm2, self.cross_attn = nn.LayerNorm(c.d_model), Attention(c.d_model, c.n_heads, c.dropout)
        self.norm3, self.ff = nn.LayerNorm(c.d_model), FeedForward(c.d_model, c.d_ff, c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(
        self,
        x: Tensor,
        memory_kv: tuple[Tensor, Tensor],
        src_mask: Tensor,
        past_kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Without `past_kv`, causal attention over all of `x`; with it, `x` holds only the next
        positions, which attend to the cached ones. Returns the output and the new self-attention keys/values."""
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)
        causal = past_kv is None and x.size(1) > 1
        x = x + self.drop(self.self_attn(h, k, v, causal=causal))
        # Cross-attention queries are independent, so the hypotheses that share a source sentence (a
        # beam) attend to its memory together, as one row of several queries: memory is never copied.
        h = self.norm2(x).reshape(src_mask.size(0), -1, x.size(-1))
        x = x + self.drop(self.cross_attn(h, *memory_kv, mask=src_mask).reshape(x.shape))
        return x + self.drop(self.ff(self.norm3(x))), (k, v)


@dataclass
class Hidden:
    """The output of every encoder and decoder layer of one forward pass."""

    encoder: list[Tensor] = field(default_factory=list)
    decoder: list[Tensor] = field(default_factory=list)


@dataclass
class DecoderState:
    """What incremental decoding keeps between steps: per source sentence, and per hypothesis.

    Each sentence has `group` hypotheses (its beam), rows i·group … i·group+group-1 of self_kv.
    """

    src_mask: Tensor  # (N, 1, 1, S), True where the source has a token
    memory_kv: list[tuple[Tensor, Tensor]]  # per layer, (N, H, S, D/H): encoder output projected once
    self_kv: list[tuple[Tensor, Tensor] | None]  # per layer, (N·group, H, T, D/H): the positions so far
    group: int = 1
    length: int = 0

    def select(self, rows: Tensor, sentences: Tensor | None = None) -> DecoderState:
        """Keep (reorder, repeat) the hypotheses `rows`; with `sentences`, keep only those sentences,
        whose hypotheses `rows` must then name, `group` per sentence, in the same order."""
        memory_kv, src_mask = self.memory_kv, self.src_mask
        if sentences is not None:
            memory_kv = [(k.index_select(0, sentences), v.index_select(0, sentences)) for k, v in memory_kv]
            src_mask = src_mask.index_select(0, sentences)
        self_kv = [
            None if kv is None else (kv[0].index_select(0, rows), kv[1].index_select(0, rows)) for kv in self.self_kv
        ]
        return DecoderState(src_mask, memory_kv, self_kv, self.group, self.length)

    def with_group(self, group: int) -> DecoderState:
        """The same sentences with `group` hypotheses each; only before the first step."""
        assert self.length == 0
        return DecoderState(self.src_mask, self.memory_kv, self.self_kv, group, 0)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = config
        if c.share_embeddings and c.src_vocab_size != c.tgt_vocab_size:
            raise KdmtError("shared embeddings need one vocabulary size for source and target")
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.d_model, padding_idx=PAD)
        self.src_embed = (
            self.tgt_embed if c.share_embeddings else nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=PAD)
        )
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.dec_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.register_buffer("positions", sinusoids(c.max_positions, c.d_model), persistent=False)
        self.scale = math.sqrt(c.d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if "embed" in name:
                nn.init.normal_(p, std=self.config.d_model**-0.5)
                with torch.no_grad():
                    p[PAD].zero_()
            elif p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def embed(self, table: nn.Embedding, tokens: Tensor, start: int = 0) -> Tensor:
        length = tokens.size(1)
        if start + length > self.config.max_positions:
            raise KdmtError(f"sequence of {start + length} tokens exceeds max_positions {self.config.max_positions}")
        x = table(tokens) * self.scale + self.positions[start : start + length].to(table.weight.dtype)
        return self.drop(x)

    def encode(self, src: Tensor, hidden: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Encoder output (B, S, D) and the source mask (B, 1, 1, S); each layer's output is
        appended to `hidden` when it is given (for hidden-state distillation)."""
        mask = (src != PAD)[:, None, None, :]
        x = self.embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, mask)
            if hidden is not None:
                hidden.append(x)
        return self.enc_norm(x), mask

    def output(self, h: Tensor) -> Tensor:
        return F.linear(self.dec_norm(h), self.tgt_embed.weight)

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor, hidden: list[Tensor] | None = None) -> Tensor:
        """Logits (B, T, V) for every target position at once (teacher forcing)."""
        x = self.embed(self.tgt_embed, tgt_in)
        for layer in self.decoder:
            x, _ = layer(x, layer.cross_attn.keys_values(memory), src_mask)
            if hidden is not None:
                hidden.append(x)
        return self.output(x)

    def forward(self, src: Tensor, tgt_in: Tensor, hidden: Hidden | None = None) -> Tensor:
        """Logits (B, T, V); with `hidden`, the encoder and decoder layer outputs are collected in it."""
        memory, mask = self.encode(src, hidden.encoder if hidden else None)
        return self.decode(tgt_in, memory, mask, hidden.decoder if hidden else None)

    def start_state(self, memory: Tensor, src_mask: Tensor) -> DecoderState:
        """Project the encoder output once per layer for incremental decoding."""
        kv = [layer.cross_attn.keys_values(memory) for layer in self.decoder]
        return DecoderState(src_mask, kv, [None] * len(self.decoder))

    def step(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """Logits (B, V) of the next token after `tokens` (B,); extends `state` in place."""
        x = self.embed(self.tgt_embed, tokens[:, None], start=state.length)
        for i, layer in enumerate(self.decoder):
            x, state.self_kv[i] = layer(x, state.memory_kv[i], state.src_mask, state.self_kv[i])
        state.length += 1
        return self.output(x[:, 0])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
