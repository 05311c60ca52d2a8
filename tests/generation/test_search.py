"""The search functions on a tiny random decoder: the cache against full forward passes, sampling
rules, left-padded batches against rows decoded alone, and beam search against brute force.

Parameters are large (init_std 0.5) so logits are far apart and the argmax is not the same
token everywhere; shapes are shared between tests so compiles are reused.
"""

import dataclasses
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import generation
from llm_jax.generation import reference
from llm_jax.generation import search
from llm_jax.models import kinds
from llm_jax.models.layers import TransformerConfig

BASE = TransformerConfig(vocab_size=50, num_layers=2, num_heads=4, num_kv_heads=4, emb_dim=32, head_dim=8,
                         mlp_dim=64, max_len=32, init_std=0.5)
VARIANTS = {  # each position encoding once; grouped-query and scanned layers ride along
    'learned': BASE,
    'sinusoidal_scan': dataclasses.replace(BASE, pos_encoding='sinusoidal', scan_layers=True),
    'rope_gqa': dataclasses.replace(BASE, pos_encoding='rope', num_kv_heads=2),
    # T5's causal buckets in a decoder: exact up to 4 apart, log-spaced to 20, so the bias differs
    # across the prompt and the generated tokens
    't5_relative': dataclasses.replace(BASE, pos_encoding='t5_relative', relative_buckets=8, relative_max_distance=20),
}
P, N = 5, 27  # prompt length + new tokens = max_len: the cache is filled to the end


@functools.lru_cache(maxsize=None)
def model(cfg: TransformerConfig):
  """(kind, boxed params): random N(0, init_std) parameters drawn with NumPy in init's structure."""
  kind = kinds.build('decoder', cfg)
  shapes = jax.eval_shape(kind.init, jax.random.key(0), kind.example_batch(1, cfg.max_len))
  rs = np.random.RandomState(0)
  draw = lambda path, x: (np.ones(x.shape, np.float32) if path[-2].key == 'scale' else
                          rs.normal(0, cfg.init_std, x.shape).astype(np.float32))
  return kind, jax.tree_util.tree_map_with_path(draw, shapes['params'])


@functools.lru_cache(maxsize=None)
def full_forward(cfg: TransformerConfig):
  """Jitted (params, tokens[B,T], positions, segment_ids) -> logits[B,T,V] of the plain model."""
  kind, _ = model(cfg)
  return jax.jit(lambda params, tokens, pos, seg: kind.module.apply({'params': params}, tokens, pos, seg))


def forward(cfg, tokens):
  tokens = np.asarray(tokens, np.int32)
  pos = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  return np.asarray(full_forward(cfg)(nn.meta.unbox(model(cfg)[1]), tokens, pos, np.ones_like(tokens)))


def prompt_rows(batch=2, length=P, seed=0, vocab=BASE.vocab_size):
  return np.random.RandomState(seed).randint(0, vocab, (batch, length)).astype(np.int32)


def decode(cfg, prompt, n=N, **kw):
  kind, params = model(cfg)
  return generation.decode(kind, params, prompt, max_new_tokens=n, **kw)


def greedy(cfg, prompt, n=N, **kw):
  return np.asarray(decode(cfg, prompt, n, **kw).tokens[:, 0])


@pytest.mark.parametrize('name', list(VARIANTS))
def test_kv_cache_matches_full_forward(name):
  """Greedy tokens with the cache are the argmax of one full forward pass over prompt + tokens
  (by causality the logits a loop over the growing prefix would see), and equal the no-cache
  reference's."""
  cfg = VARIANTS[name]
  prompt = prompt_rows()
  cached = greedy(cfg, prompt)
  assert cached.shape == (2, N) and cached.dtype == np.int32
  kind, params = model(cfg)
  np.testing.assert_array_equal(
      cached, reference.decode_no_cache(kind, params, prompt, max_new_tokens=N, rng=jax.random.key(0)))
  logits = forward(cfg, np.concatenate([prompt, cached], 1))
  np.testing.assert_array_equal(cached, logits[:, P - 1:-1].argmax(-1))
  assert len(np.unique(cached)) > 3


@pytest.mark.parametrize('name', list(VARIANTS))
def test_left_padded_batch_equals_rows_decoded_alone(name):
  """Prompts of 2, 5 and 9 tokens in one left-padded batch: each row's greedy and beam outputs are
  those of the row decoded by itself (padding never attended to, positions from each row's start)."""
  cfg = VARIANTS[name]
  rows = [prompt_rows(1, n, seed=n)[0].tolist() for n in (2, 5, 9)]
  batch, lengths = generation.left_padded(rows, pad_id=7)
  together = decode(cfg, batch, 12, lengths=lengths)
  beams = decode(cfg, batch, 12, lengths=lengths, num_beams=3, num_return_sequences=3, eos_ids=(3,))
  for i, row in enumerate(rows):
    alone = decode(cfg, np.asarray([row], np.int32), 12)
    np.testing.assert_array_equal(np.asarray(together.tokens)[i], np.asarray(alone.tokens)[0])
    alone_beams = decode(cfg, np.asarray([row], np.int32), 12, num_beams=3, num_return_sequences=3, eos_ids=(3,))
    np.testing.assert_array_equal(np.asarray(beams.tokens)[i], np.asarray(alone_beams.tokens)[0])
    np.testing.assert_allclose(np.asarray(beams.scores)[i], np.asarray(alone_beams.scores)[0], rtol=1e-5)


def test_no_recompile_on_new_prompts_or_seeds():
  cfg = VARIANTS['learned']
  greedy(cfg, prompt_rows())
  size = generation.api.compiled('cpu')._cache_size()  # pylint: disable=protected-access
  greedy(cfg, prompt_rows(seed=1), rng=jax.random.key(5))
  assert generation.api.compiled('cpu')._cache_size() == size  # pylint: disable=protected-access


def test_unboxed_and_boxed_params_agree():
  cfg = VARIANTS['learned']
  kind, params = model(cfg)
  out = generation.decode(kind, nn.meta.unbox(params), prompt_rows(), max_new_tokens=N)
  np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), greedy(cfg, prompt_rows()))


def sample(cfg, prompt, seed, n=N, **kw):
  return np.asarray(decode(cfg, prompt, n, rng=jax.random.key(seed), **kw).tokens[:, 0])


def test_top_k_1_and_tiny_top_p_are_greedy():
  cfg = VARIANTS['learned']
  expected = greedy(cfg, prompt_rows())
  np.testing.assert_array_equal(sample(cfg, prompt_rows(), 3, temperature=1.0, top_k=1), expected)
  np.testing.assert_array_equal(sample(cfg, prompt_rows(), 3, temperature=1.0, top_p=1e-6), expected)


def test_seeded_top_k_sampling_is_reproducible_varies_and_stays_in_top_k():
  cfg, k = VARIANTS['learned'], 3
  prompt = np.repeat(prompt_rows(batch=1), 32, axis=0)
  a, b, c = (sample(cfg, prompt, s, n=4, temperature=3.0, top_k=k) for s in (0, 0, 1))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  logits = forward(cfg, prompt[:1])[0, -1]
  first = set(a[:, 0].tolist()) | set(c[:, 0].tolist())
  assert first <= set(np.argsort(logits)[-k:].tolist())
  assert len(first) > 1


def test_sampling_with_cache_equals_sampling_without():
  cfg = VARIANTS['rope_gqa']
  kw = dict(temperature=1.5, top_k=5, top_p=0.9)
  cached = sample(cfg, prompt_rows(), 7, **kw)
  kind, params = model(cfg)
  uncached = reference.decode_no_cache(kind, params, prompt_rows(), max_new_tokens=N, rng=jax.random.key(7), **kw)
  np.testing.assert_array_equal(cached, uncached)
  assert (cached != greedy(cfg, prompt_rows())).any()


def test_num_return_sequences_samples_each_prompt_independently():
  cfg = VARIANTS['learned']
  out = decode(cfg, prompt_rows(), 6, rng=jax.random.key(1), temperature=2.0, num_return_sequences=4)
  tokens = np.asarray(out.tokens)
  assert tokens.shape == (2, 4, 6)
  assert len({tuple(r) for r in tokens[0]}) > 1


def test_sample_logits_top_p_keeps_the_smallest_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 256))
  draw = lambda top_p: set(np.asarray(search.sample_logits(
      logits, jax.random.key(0), temperature=1.0, top_k=0, top_p=top_p)).tolist())
  assert draw(0.5) == {0}
  assert draw(0.7) == {0, 1}
  assert draw(0.81) == {0, 1, 2}
  assert draw(1.0) == {0, 1, 2, 3}


def test_rows_pad_after_eos_and_several_eos_ids_end_a_row():
  cfg = VARIANTS['learned']
  prompt = prompt_rows()
  plain = greedy(cfg, prompt)
  eos, other = int(plain[0, 2]), int(plain[1, 4])
  assert (plain[0, 3:] != eos).any()
  out = decode(cfg, prompt, eos_ids=(eos, other), pad_id=49)
  tokens, lengths = np.asarray(out.tokens[:, 0]), np.asarray(out.lengths[:, 0])
  for row, ref, length in zip(tokens, plain, lengths):
    hits = np.flatnonzero(np.isin(ref, (eos, other)))
    stop = hits[0] + 1 if len(hits) else N
    assert length == stop
    np.testing.assert_array_equal(row[:stop], ref[:stop])
    assert (row[stop:] == 49).all()


def test_min_new_tokens_forbids_eos_before():
  cfg = VARIANTS['learned']
  plain = greedy(cfg, prompt_rows())
  eos = int(plain[0, 1])
  out = np.asarray(decode(cfg, prompt_rows(), eos_ids=(eos,), min_new_tokens=5).tokens[:, 0])
  assert not np.isin(out[:, :5], eos).any()
  logits = np.array(forward(cfg, np.concatenate([prompt_rows(), out[:, :1]], 1))[:, -1])
  logits[:, eos] = -np.inf
  np.testing.assert_array_equal(out[:, 1], logits.argmax(-1))


def test_beam_search_with_one_beam_and_early_stopping_is_greedy():
  cfg = VARIANTS['rope_gqa']
  plain = greedy(cfg, prompt_rows())
  eos = int(plain[0, 3])
  want = greedy(cfg, prompt_rows(), eos_ids=(eos,))
  kind, params = model(cfg)

  @jax.jit
  def one_beam(params, prompt):
    decoding = kind.start_decoding(nn.meta.unbox(params), prompt, jnp.full((2,), P), P + N)
    return search.beam_search(decoding, num_beams=1, max_new_tokens=N, eos_ids=(eos,), pad_id=eos,
                              early_stopping=True).tokens[:, 0]

  np.testing.assert_array_equal(np.asarray(one_beam(params, prompt_rows())), want)


# ---------------------------------------------------------------------------------------- brute force

TINY = TransformerConfig(vocab_size=5, num_layers=2, num_heads=2, num_kv_heads=2, emb_dim=16, head_dim=8,
                         mlp_dim=32, max_len=8, init_std=0.8)
EOS, STEPS, TINY_P = 0, 4, 3


def every_hypothesis(min_new: int = 0):
  """[(tokens, sum of log-probabilities)] of every finished continuation of the tiny prompt: ending at
  its first eos, or at STEPS tokens; eos impossible before min_new tokens (log p = -inf, no renormalizing,
  as Hugging Face's min-length rule)."""
  prompt = prompt_rows(1, TINY_P, seed=3, vocab=TINY.vocab_size)[0]
  seqs = []
  for length in range(1, STEPS + 1):
    for body in itertools.product(range(1, TINY.vocab_size), repeat=length - 1):
      lasts = range(TINY.vocab_size) if length == STEPS else (EOS,)
      seqs += [list(body) + [last] for last in lasts]
  padded = np.asarray([list(prompt) + s + [1] * (STEPS - len(s)) for s in seqs], np.int32)
  logp = jax.nn.log_softmax(forward(TINY, padded), axis=-1)
  out = []
  for row, s in enumerate(seqs):
    total = 0.0
    for i, t in enumerate(s):
      total += -np.inf if (t == EOS and i < min_new) else float(logp[row, TINY_P - 1 + i, t])
    out.append((s, total))
  return prompt, out


@pytest.mark.parametrize('early_stopping, length_penalty, min_new', [
    (True, 1.0, 0), (False, 1.0, 0), ('never', 1.0, 0), ('never', 2.0, 0), (False, -1.0, 2), (True, 0.0, 0)])
def test_enough_beams_find_the_best_hypotheses(early_stopping, length_penalty, min_new):
  """With as many beams as live prefixes (4³ = 64 before the last step), every early_stopping mode
  returns exactly the best 64 of all 341 hypotheses, best first, by sum / length ** length_penalty."""
  prompt, hyps = every_hypothesis(min_new)
  scored = sorted(((total / len(s) ** length_penalty, s) for s, total in hyps if np.isfinite(total)),
                  key=lambda x: -x[0])
  k = 64
  out = decode(TINY, prompt[None], STEPS, num_beams=k, num_return_sequences=k, eos_ids=(EOS,),
               early_stopping=early_stopping, length_penalty=length_penalty, min_new_tokens=min_new)
  scores, tokens, lengths = (np.asarray(x)[0] for x in (out.scores, out.tokens, out.lengths))
  np.testing.assert_allclose(scores, [s for s, _ in scored[:k]], rtol=1e-5, atol=1e-6)
  assert tokens[0, :lengths[0]].tolist() == scored[0][1]
  assert scored[0][0] > scored[1][0] + 1e-4  # the best one is unique, so the check above can fail
  for row, length, score in zip(tokens, lengths, scores):
    match = [total for s, total in hyps if s == row[:length].tolist()]
    np.testing.assert_allclose(score, match[0] / length ** length_penalty, rtol=1e-5)
    assert (row[length:] == EOS).all()


# ---------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize('kw, match', [
    (dict(prompt=np.zeros((2, 0), np.int32)), 'empty'),
    (dict(temperature=-1.0), 'temperature'),
    (dict(temperature=1.0, top_p=0.0), 'top_p'),
    (dict(temperature=1.0, top_p=1.5), 'top_p'),
    (dict(temperature=1.0, top_k=-1), 'top_k'),
    (dict(num_beams=0), 'num_beams=0 must be at least 1'),
    (dict(num_beams=2, num_return_sequences=3), 'num_return_sequences=3 is more than num_beams=2'),
    (dict(num_return_sequences=2), 'greedy decoding would return the same'),
    (dict(num_beams=2, temperature=1.0), 'beam search with sampling'),
    (dict(num_beams=2, early_stopping='sometimes'), "early_stopping='sometimes'"),
    (dict(max_new_tokens=0), 'max_new_tokens=0 must be at least 1'),
    (dict(prompt=prompt_rows(length=30), max_new_tokens=5), r"30 tokens \+ max_new_tokens 5 = 35 exceed the model's 32"),
    (dict(lengths=[0, 5]), 'lengths must give each of the 2 prompts 1..5 tokens'),
])
def test_bad_arguments_raise_one_line(kw, match):
  args = dict(prompt=prompt_rows(), max_new_tokens=4) | kw
  kind, params = model(BASE)
  with pytest.raises(ValueError, match=match) as e:
    generation.decode(kind, params, args.pop('prompt'), **args)
  assert '\n' not in str(e.value)


def test_an_encoder_does_not_generate():
  kind = kinds.build('encoder', dataclasses.replace(BASE, causal=False, head='mlm'))
  with pytest.raises(ValueError, match="model.kind='encoder' does not generate"):
    generation.decode(kind, {}, prompt_rows(), max_new_tokens=2)
