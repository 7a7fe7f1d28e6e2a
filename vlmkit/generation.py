"""Decoding shared by every native generative model: greedy, beam search, top-k / top-p sampling, stop tokens,
batched, with or without a KV cache.

A model takes part by implementing two methods (see :class:`Decodable`):

- ``embed_tokens(ids [B, T]) -> [B, T, W]``: token embeddings of the language model;
- ``decode(embeddings [B, T, W], attention_mask [B, P + T], state) -> logits [B, T, V]``: run the language model
  over new positions; with a cache in ``state`` only the new positions are given (the cache holds the rest).

and by building a :class:`DecodingState` for a batch: the prefix embeddings (image tokens, prompt...), their
attention mask (left-padded), and whatever the model attends to besides (``context``, e.g. CoCa's image tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F


@dataclass
class DecodingConfig:
    max_new_tokens: int = 30
    num_beams: int = 1
    do_sample: bool = False
    top_k: int | None = None
    top_p: float | None = None
    temperature: float = 1.0
    length_penalty: float = 1.0  # beam search: score / length ** length_penalty
    use_cache: bool = True
    seed: int | None = None  # sampling: a seed makes the draw reproducible

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, not {self.num_beams}")
        if self.do_sample and self.num_beams > 1:
            raise ValueError("choose sampling or beam search, not both")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, not {self.top_k}")


@dataclass
class DecodingState:
    """Everything the decoder needs for a batch; every tensor is batch-first so beams can be selected."""

    prefix: torch.Tensor  # [B, P, W] prefix embeddings (left-padded)
    prefix_mask: torch.Tensor  # [B, P] bool, True on real positions
    context: torch.Tensor | None = None  # [B, N, W] cross-attention memory (CoCa), if any
    context_mask: torch.Tensor | None = None
    cache: Any = None  # the model's KV cache (any nest of batch-first tensors with a ``select`` method)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def select(self, indices: torch.Tensor) -> "DecodingState":
        """The states of batch rows ``indices`` (repeats allowed: beams)."""
        pick = (lambda t: t.index_select(0, indices) if isinstance(t, torch.Tensor) else t)
        return replace(self, prefix=pick(self.prefix), prefix_mask=pick(self.prefix_mask),
                       context=pick(self.context), context_mask=pick(self.context_mask),
                       cache=self.cache.select(indices) if self.cache is not None else None,
                       extras={key: pick(value) for key, value in self.extras.items()})


class Decodable(Protocol):
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor: ...

    def decode(self, embeddings: torch.Tensor, attention_mask: torch.Tensor, state: DecodingState) -> torch.Tensor: ...

    def new_cache(self) -> Any: ...


def _next_logits(model: Decodable, state: DecodingState, generated: torch.Tensor, use_cache: bool) -> torch.Tensor:
    """Logits [B, V] for the position after the prefix and ``generated`` [B, T]."""
    batch, steps = generated.shape
    new_mask = torch.ones(batch, steps, dtype=torch.bool, device=generated.device)
    mask = torch.cat([state.prefix_mask, new_mask], dim=1)
    if not use_cache:
        embeddings = torch.cat([state.prefix, model.embed_tokens(generated)], dim=1) if steps else state.prefix
        return model.decode(embeddings, mask, replace(state, cache=None))[:, -1]
    if steps == 0:  # prefill: the whole prefix goes into the fresh cache
        return model.decode(state.prefix, mask, state)[:, -1]
    return model.decode(model.embed_tokens(generated[:, -1:]), mask, state)[:, -1]


def _filter_logits(logits: torch.Tensor, config: DecodingConfig) -> torch.Tensor:
    logits = logits / config.temperature
    if config.top_k is not None:
        kth = logits.topk(min(config.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token once the tokens before it already reach top_p (the first token always stays)
        drop = (cumulative - sorted_logits.softmax(dim=-1)) >= config.top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(model: Decodable, state: DecodingState, config: DecodingConfig, *, stop_ids: Sequence[int],
             pad_id: int) -> list[list[int]]:
    """New token ids for each batch row, without the prefix and without the stop token."""
    if config.num_beams > 1:
        return _beam_search(model, state, config, stop_ids=stop_ids)
    batch = state.prefix.shape[0]
    device = state.prefix.device
    if config.use_cache:
        state = replace(state, cache=model.new_cache())
    generator = None
    if config.do_sample and config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    stops = torch.tensor(list(stop_ids), device=device, dtype=torch.long)
    generated = torch.zeros(batch, 0, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(config.max_new_tokens):
        logits = _next_logits(model, state, generated, config.use_cache).float()
        if config.do_sample:
            probabilities = _filter_logits(logits, config).softmax(dim=-1)
            token = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
        else:
            token = logits.argmax(dim=-1)
        token = token.masked_fill(finished, pad_id)
        generated = torch.cat([generated, token[:, None]], dim=1)
        finished |= torch.isin(token, stops)
        if bool(finished.all()):
            break
    return [_until_stop(row, stop_ids) for row in generated.tolist()]


def _until_stop(ids: list[int], stop_ids: Sequence[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[:position]
    return ids


def _beam_search(model: Decodable, state: DecodingState, config: DecodingConfig, *,
                 stop_ids: Sequence[int]) -> list[list[int]]:
    """Beam search with a length penalty; a hypothesis ends at a stop token or at max_new_tokens."""
    batch, beams = state.prefix.shape[0], config.num_beams
    device = state.prefix.device
    state = state.select(torch.arange(batch, device=device).repeat_interleave(beams))
    if config.use_cache:
        state = replace(state, cache=model.new_cache())
    scores = torch.full((batch, beams), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first may expand at step one
    scores = scores.view(-1)
    generated = torch.zeros(batch * beams, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    stop_set = set(stop_ids)
    for step in range(config.max_new_tokens):
        logprobs = F.log_softmax(_next_logits(model, state, generated, config.use_cache).float(), dim=-1)
        vocab = logprobs.shape[-1]
        candidates = (scores[:, None] + logprobs).view(batch, beams * vocab)
        top_scores, top_ids = candidates.topk(2 * beams, dim=-1)
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(batch):
            kept = 0
            for score, flat in zip(top_scores[b].tolist(), top_ids[b].tolist()):
                row, token = b * beams + flat // vocab, flat % vocab
                if done[b]:
                    break
                if token in stop_set:
                    length = step + 1
                    finished[b].append((score / length ** config.length_penalty, generated[row].tolist()))
                    continue
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
                kept += 1
                if kept == beams:
                    break
            if done[b] or kept < beams:  # a finished group keeps dummy beams so the batch shape stays fixed
                fill = beams - kept
                next_rows.extend([b * beams] * fill)
                next_tokens.extend([next(iter(stop_set), 0)] * fill)
                next_scores.extend([float("-inf")] * fill)
            best_open = max((s for r, s in zip(next_rows[-beams:], next_scores[-beams:])), default=float("-inf"))
            if len(finished[b]) >= beams:
                best_done = max(score for score, _ in finished[b])
                # with a length penalty >= 0 an open beam can only lose score per token it adds
                if best_open / (step + 1) ** config.length_penalty <= best_done:
                    done[b] = True
        if all(done):
            break
        rows = torch.tensor(next_rows, device=device)
        state = state.select(rows)
        generated = torch.cat([generated.index_select(0, rows),
                               torch.tensor(next_tokens, device=device)[:, None]], dim=1)
        scores = torch.tensor(next_scores, device=device)
    outputs = []
    for b in range(batch):
        hypotheses = list(finished[b])
        if not done[b]:
            length = generated.shape[1]
            for k in range(beams):
                row = b * beams + k
                if scores[row] > float("-inf"):
                    hypotheses.append((float(scores[row]) / max(length, 1) ** config.length_penalty,
                                       generated[row].tolist()))
        outputs.append(max(hypotheses, key=lambda item: item[0])[1] if hypotheses else [])
    return outputs
