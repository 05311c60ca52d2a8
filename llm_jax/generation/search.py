"""Search functions that know nothing about the model: sampling (greedy included) and beam search.

Each starts from a ``kinds.Decoding``: the next token's logits after every prompt, a
cache, and ``tokens_to_logits(ids[R, 1], cache) -> (logits[R, V], cache)``; it feeds the
chosen tokens back one at a time inside one ``lax.while_loop`` and stops as soon as
nothing can change any more. Call them under ``jax.jit`` with the settings static.

Shapes: B prompts, K beams, N = max_new_tokens, V vocabulary. Tokens after a row's end
(its eos token, which is kept) are ``pad_id``.

Beam search follows Hugging Face's ``generate(num_beams=K)`` step for step, so the same
logits give the same token ids:

- every step takes the top max(2, 1 + len(eos_ids))·K continuations of all beams by summed
  log-probability; those ending in an eos token, or reaching N tokens, are finished
  hypotheses (only among the first K), scored sum / length ** length_penalty with length
  the new tokens including the eos; the best K others continue;
- ``early_stopping`` True: a prompt is done once K hypotheses are finished. False: once
  K are finished and the best running beam, scored at its current length, cannot beat
  the worst of them (a heuristic: with length_penalty > 0 a longer beam might). 'never':
  the same bound taken at N tokens when length_penalty > 0, which is exact;
- ``min_new_tokens``: eos tokens are impossible before that many new tokens.
"""

from typing import Any, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp

_NEG = -1.0e9  # Hugging Face's "impossible" score, kept so that orderings of the impossible agree too


class SampleOutput(NamedTuple):
  tokens: Any    # int32 [B, N]
  lengths: Any   # int32 [B]: new tokens up to and including the eos (N when none came)


class BeamOutput(NamedTuple):
  tokens: Any    # int32 [B, K, N], best first
  scores: Any    # float32 [B, K]: sum of log-probabilities / length ** length_penalty
  lengths: Any   # int32 [B, K]


def sample_logits(logits, key, *, temperature: float, top_k: int, top_p: float):
  """Draws one token per row from logits[B, V] (float) -> int32[B].

  temperature 0 is greedy argmax. Otherwise logits / temperature, then top-k (the k
  largest; 0 = off), then nucleus top-p (the smallest set of most likely tokens whose
  probability reaches top_p, the top token always; 1.0 = off), then a categorical draw
  among what is left. The draw runs over the k candidates only (with top-k) or over the
  sorted vocabulary (top-p alone), never over masked copies of the whole vocabulary.
  """
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if 0 < top_k < logits.shape[-1]:
    values, index = jax.lax.top_k(logits, top_k)        # sorted, largest first
  elif top_p < 1.0:
    index = jnp.argsort(-logits, axis=-1)
    values = jnp.take_along_axis(logits, index, axis=-1)
  else:
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
  if top_p < 1.0:
    probs = jax.nn.softmax(values, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    values = jnp.where(mass_before < top_p, values, -jnp.inf)
  choice = jax.random.categorical(key, values, axis=-1)
  return jnp.take_along_axis(index, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _is_eos(tokens, eos_ids: Sequence[int]):
  hit = jnp.zeros(tokens.shape, bool)
  for e in eos_ids:
    hit |= tokens == e
  return hit


def _forbid_eos(logits, eos_ids: Sequence[int], forbid):
  """logits with every eos id at -inf where ``forbid`` (a traced bool) holds."""
  if not eos_ids:
    return logits
  column = jnp.zeros(logits.shape[-1], bool).at[jnp.asarray(eos_ids)].set(True)
  return jnp.where(forbid & column, -jnp.inf, logits)


def _map_rows(fn, cache, axis: int):
  """fn applied along ``axis`` of every cache leaf that has it (see ``kinds.Decoding``)."""
  return jax.tree.map(lambda x: fn(x) if x.ndim > axis else x, cache)


def sample(decoding, *, max_new_tokens: int, rng, temperature: float = 0.0, top_k: int = 0,
           top_p: float = 1.0, eos_ids: Sequence[int] = (), pad_id: int = 0,
           min_new_tokens: int = 0) -> SampleOutput:
  """Greedy (temperature 0) or sampled decoding of N >= 1 tokens per prompt.

  Token i is drawn with ``jax.random.fold_in(rng, i)`` (``sample_logits``); a row that
  has produced an eos token produces ``pad_id`` after it; the loop ends when every row
  has, or after N tokens.
  """
  logits, cache, tokens_to_logits, axis = decoding
  del axis  # sampling never reorders rows
  b = logits.shape[0]

  def choose(logits, i, done):
    logits = _forbid_eos(logits, eos_ids, i < min_new_tokens)
    token = sample_logits(logits, jax.random.fold_in(rng, i), temperature=temperature, top_k=top_k, top_p=top_p)
    token = jnp.where(done, pad_id, token)
    return token, done | _is_eos(token, eos_ids)

  first, done = choose(logits, 0, jnp.zeros((b,), bool))
  tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
  lengths = jnp.where(done, 1, max_new_tokens)

  def cond(state):
    i, _, _, done, _ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, cache, tokens, done, lengths = state
    logits, cache = tokens_to_logits(tokens[:, i - 1][:, None], cache)
    token, now_done = choose(logits, i, done)
    lengths = jnp.where(now_done & ~done, i + 1, lengths)
    return i + 1, cache, tokens.at[:, i].set(token), now_done, lengths

  _, _, tokens, _, lengths = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, tokens, done, lengths))
  return SampleOutput(tokens, lengths)


class _Beams(NamedTuple):
  """Beam search state; [B, K, ...] per prompt and beam."""
  running: Any            # int32 [B, K, N] tokens of the running beams
  running_scores: Any     # float32 [B, K] summed log-probabilities
  finished: Any           # int32 [B, K, N] the best finished hypotheses so far
  finished_scores: Any    # float32 [B, K] length-penalized; _NEG for an empty slot
  finished_lengths: Any   # int32 [B, K]
  is_finished: Any        # bool [B, K] whether the slot holds a hypothesis
  undecided: Any          # bool [B] the running beams might still beat the finished ones
  all_hit: Any            # bool: every candidate of the last step finished (nothing can continue)


def _gather(x, index):
  """x[B, M, ...] at index[B, K] along axis 1 -> [B, K, ...]."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(decoding, *, num_beams: int, max_new_tokens: int, eos_ids: Sequence[int] = (),
                pad_id: int = 0, length_penalty: float = 1.0, early_stopping: Union[bool, str] = False,
                min_new_tokens: int = 0) -> BeamOutput:
  """Beam search of up to N new tokens per prompt with K beams (rules in the module docstring)."""
  first_logits, cache, tokens_to_logits, axis = decoding
  b, v = first_logits.shape
  k, n = num_beams, max_new_tokens
  keep = max(2, 1 + len(eos_ids)) * k
  best_length = lambda i: n if (early_stopping == 'never' and length_penalty > 0) else i

  def advance(state: _Beams, logits, i):
    """Step i (0-based): logits [B·K, V] of every running beam -> the next state and the
    [B·K] rows of the cache each running beam continues from."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp = _forbid_eos(logp, eos_ids, i < min_new_tokens)
    total = (logp.reshape(b, k, v) + state.running_scores[:, :, None]).reshape(b, k * v)
    top_scores, top_index = jax.lax.top_k(total, keep)
    source, token = top_index // v, top_index % v
    candidates = _gather(state.running, source).at[:, :, i].set(token)
    hits = _is_eos(token, eos_ids) | (i + 1 >= n)

    alive_scores = top_scores + hits.astype(jnp.float32) * _NEG
    _, pick = jax.lax.top_k(alive_scores, k)
    running, running_scores = _gather(candidates, pick), _gather(alive_scores, pick)
    rows = (_gather(source, pick) + jnp.arange(b)[:, None] * k).reshape(-1)

    just_finished = hits & (jnp.arange(keep) < k)[None, :]
    scores = top_scores / jnp.float32(i + 1) ** length_penalty
    full = jnp.all(state.is_finished, axis=1, keepdims=True) & (early_stopping is True)
    scores += full.astype(jnp.float32) * _NEG
    scores += (~state.undecided[:, None]).astype(jnp.float32) * _NEG
    scores += (~just_finished).astype(jnp.float32) * _NEG
    merged_scores = jnp.concatenate([state.finished_scores, scores], axis=1)
    _, best = jax.lax.top_k(merged_scores, k)
    pick_merged = lambda old, new: _gather(jnp.concatenate([old, new], axis=1), best)
    finished = pick_merged(state.finished, candidates)
    finished_scores = _gather(merged_scores, best)
    finished_lengths = pick_merged(state.finished_lengths, jnp.full((b, keep), i + 1, jnp.int32))
    is_finished = pick_merged(state.is_finished, just_finished)

    length = jnp.float32(best_length(i + 1)) ** length_penalty
    best_possible = running_scores[:, :1] / length
    worst = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), _NEG)
    undecided = state.undecided & jnp.any(best_possible > worst, axis=1)
    return _Beams(running, running_scores, finished, finished_scores, finished_lengths, is_finished, undecided,
                  jnp.all(hits)), rows

  def go_on(state: _Beams):
    open_beams = ~(jnp.all(state.is_finished) & (early_stopping is True))
    return jnp.any(state.undecided) & open_beams & ~state.all_hit

  empty = jnp.full((b, k, n), pad_id, jnp.int32)
  state = _Beams(empty, jnp.tile(jnp.array([0.0] + [_NEG] * (k - 1), jnp.float32), (b, 1)), empty,
                 jnp.full((b, k), _NEG, jnp.float32), jnp.zeros((b, k), jnp.int32), jnp.zeros((b, k), bool),
                 jnp.ones((b,), bool), jnp.array(False))
  # Step 0 from the prompts' logits: every beam of a prompt starts from the same row.
  state, rows = advance(state, jnp.repeat(first_logits, k, axis=0), 0)
  cache = _map_rows(lambda x: jnp.take(jnp.repeat(x, k, axis=axis), rows, axis=axis), cache, axis)

  def cond(carry):
    i, state, _ = carry
    return (i < n) & go_on(state)

  def body(carry):
    i, state, cache = carry
    logits, cache = tokens_to_logits(state.running[:, :, i - 1].reshape(-1, 1), cache)
    state, rows = advance(state, logits, i)
    return i + 1, state, _map_rows(lambda x: jnp.take(x, rows, axis=axis), cache, axis)

  _, state, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), state, cache))
  return BeamOutput(state.finished, state.finished_scores, state.finished_lengths)
