"""Generation: the KV cache against full forward passes, sampling rules, eos, errors.

A tiny random model (init_std=0.5 so logits are far apart and argmax is not
degenerate) on the CPU; shapes are shared between tests so compiles are reused.
"""

import dataclasses
import functools
import string

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import generate as gen
from llm_jax import sample as sample_cli
from llm_jax.models.decoder import DecoderLM
from llm_jax.models.layers import TransformerConfig

BASE = TransformerConfig(vocab_size=50, num_layers=2, num_heads=4, num_kv_heads=4, emb_dim=32,
                         head_dim=8, mlp_dim=64, max_len=32, init_std=0.5)
VARIANTS = {  # each position encoding once; grouped-query and scanned layers ride along
    'learned': BASE,
    'sinusoidal_scan': dataclasses.replace(BASE, pos_encoding='sinusoidal', scan_layers=True),
    'rope_gqa': dataclasses.replace(BASE, pos_encoding='rope', num_kv_heads=2),
}
P, N = 5, 27  # prompt length + new tokens = max_len: the cache is filled to the end


@functools.lru_cache(maxsize=None)
def boxed_params(cfg: TransformerConfig):
  """Random N(0, init_std) parameters in init's structure (nn.LogicallyPartitioned boxes).

  Drawn with NumPy from ``jax.eval_shape(model.init)``: compiling init costs seconds.
  """
  model = DecoderLM(cfg)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, cfg.max_len), jnp.int32))
  rs = np.random.RandomState(0)
  draw = lambda path, x: (np.ones(x.shape, np.float32) if path[-2].key == 'scale' else
                          rs.normal(0, cfg.init_std, x.shape).astype(np.float32))
  return jax.tree_util.tree_map_with_path(draw, shapes['params'])


@functools.lru_cache(maxsize=None)
def full_forward(cfg: TransformerConfig):
  """Jitted tokens[B,T] -> logits[B,T,V] of the plain (no cache) model."""
  model = DecoderLM(cfg)
  return jax.jit(lambda params, tokens: model.apply({'params': params}, tokens))


def params_of(cfg):
  return nn.meta.unbox(boxed_params(cfg))


def prompt_rows(batch=2, length=P, seed=0):
  return np.random.RandomState(seed).randint(0, BASE.vocab_size, (batch, length)).astype(np.int32)


def greedy(cfg, prompt, n=N, fn=gen.generate, **kw):
  return np.asarray(fn(cfg, boxed_params(cfg), prompt, max_new_tokens=n,
                       rng=jax.random.PRNGKey(0), temperature=0.0, **kw))


def prefill_logits(cfg: TransformerConfig, prompt):
  """Logits[B,T,V] of the decode model's prefill of prompt int32[2, T] into a fresh cache."""
  model = DecoderLM(dataclasses.replace(cfg, decode=True))

  @jax.jit
  def prefill(params, tokens):
    cache = model.init(jax.random.PRNGKey(0), jnp.zeros((2, cfg.max_len), jnp.int32))['cache']
    logits, _ = model.apply({'params': params, 'cache': cache}, tokens, mutable=['cache'])
    return logits

  return np.asarray(prefill(params_of(cfg), prompt))


@pytest.mark.parametrize('name', list(VARIANTS))
def test_kv_cache_matches_full_forward(name):
  """Greedy tokens and prefill logits with the cache equal those of full forward passes.

  By causality, one full forward over prompt + generated tokens gives the logits that a
  loop over the growing prefix would: its argmax at P-1.. must be the generated tokens.
  The prefill is checked on that whole sequence, a prompt that fills the cache.
  """
  cfg = VARIANTS[name]
  prompt = prompt_rows()
  cached = greedy(cfg, prompt)
  assert cached.shape == (2, N) and cached.dtype == np.int32
  np.testing.assert_array_equal(cached, greedy(cfg, prompt, fn=gen.generate_no_cache))
  whole = np.concatenate([prompt, cached], 1)
  logits = np.asarray(full_forward(cfg)(params_of(cfg), whole))
  np.testing.assert_array_equal(cached, logits[:, P - 1:-1].argmax(-1))
  assert len(np.unique(cached)) > 3
  np.testing.assert_allclose(prefill_logits(cfg, whole), logits, atol=1e-5, rtol=1e-5)


def test_cached_greedy_equals_plain_loop_on_growing_prefix():
  cfg, n = VARIANTS['learned'], 3
  seq = prompt_rows()
  for _ in range(n):
    logits = full_forward(cfg)(params_of(cfg), seq)
    seq = np.concatenate([seq, np.asarray(logits[:, -1]).argmax(-1)[:, None].astype(np.int32)], 1)
  np.testing.assert_array_equal(greedy(cfg, prompt_rows())[:, :n], seq[:, P:])


def test_no_recompile_on_repeated_calls():
  cfg = VARIANTS['learned']
  greedy(cfg, prompt_rows())
  size = gen._generate_cached._cache_size()
  greedy(cfg, prompt_rows(seed=1))
  assert gen._generate_cached._cache_size() == size


def test_unboxed_and_boxed_params_agree():
  cfg = VARIANTS['learned']
  out = gen.generate(cfg, params_of(cfg), prompt_rows(), max_new_tokens=N,
                     rng=jax.random.PRNGKey(0), temperature=0.0)
  np.testing.assert_array_equal(out, greedy(cfg, prompt_rows()))


def sample(cfg, prompt, seed, n=N, fn=gen.generate, **kw):
  return np.asarray(fn(cfg, boxed_params(cfg), prompt, max_new_tokens=n,
                       rng=jax.random.PRNGKey(seed), **kw))


def test_top_k_1_and_tiny_top_p_are_greedy():
  cfg = VARIANTS['learned']
  expected = greedy(cfg, prompt_rows())
  np.testing.assert_array_equal(sample(cfg, prompt_rows(), 3, top_k=1), expected)
  np.testing.assert_array_equal(sample(cfg, prompt_rows(), 3, top_p=1e-6), expected)


def test_seeded_top_k_sampling_is_reproducible_varies_and_stays_in_top_k():
  cfg, k = VARIANTS['learned'], 3
  prompt = np.repeat(prompt_rows(batch=1), 32, axis=0)
  a, b, c = (sample(cfg, prompt, s, n=4, temperature=3.0, top_k=k) for s in (0, 0, 1))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  logits = np.asarray(full_forward(cfg)(params_of(cfg), prompt[:2]))[0, -1]
  first = set(a[:, 0].tolist()) | set(c[:, 0].tolist())
  assert first <= set(np.argsort(logits)[-k:].tolist())
  assert len(first) > 1


def test_sampling_with_cache_equals_sampling_without():
  cfg = VARIANTS['rope_gqa']
  kw = dict(temperature=1.5, top_k=5, top_p=0.9)
  cached = sample(cfg, prompt_rows(), 7, **kw)
  uncached = sample(cfg, prompt_rows(), 7, fn=gen.generate_no_cache, **kw)
  np.testing.assert_array_equal(cached, uncached)
  assert (cached != greedy(cfg, prompt_rows())).any()


def test_sample_logits_top_p_keeps_the_smallest_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 256))
  draw = lambda top_p: set(np.asarray(gen.sample_logits(
      logits, jax.random.PRNGKey(0), temperature=1.0, top_k=0, top_p=top_p)).tolist())
  assert draw(0.5) == {0}
  assert draw(0.7) == {0, 1}
  assert draw(0.81) == {0, 1, 2}
  assert draw(1.0) == {0, 1, 2, 3}


def test_rows_emit_only_eos_after_eos():
  cfg = VARIANTS['learned']
  prompt = prompt_rows()
  plain = greedy(cfg, prompt)
  eos = int(plain[0, 2])
  assert (plain[0, 3:] != eos).any()
  out = greedy(cfg, prompt, eos_id=eos)
  for row, ref in zip(out, plain):
    hits = np.flatnonzero(ref == eos)
    stop = hits[0] if len(hits) else N
    np.testing.assert_array_equal(row[:stop + 1], ref[:stop + 1])
    assert (row[stop:] == eos).all()


def test_max_len_error_names_both_numbers():
  message = r'prompt length 30 \+ max_new_tokens 5 .*max_len 32.*config.model.max_len'
  with pytest.raises(ValueError, match=message):
    gen.generate(BASE, boxed_params(BASE), prompt_rows(length=30), max_new_tokens=5,
                 rng=jax.random.PRNGKey(0))


@pytest.mark.parametrize('kw, match', [
    (dict(prompt=np.zeros((2, 0), np.int32)), 'empty'),
    (dict(temperature=-1.0), 'temperature'),
    (dict(top_p=0.0), 'top_p'),
    (dict(top_p=1.5), 'top_p'),
    (dict(top_k=-1), 'top_k'),
])
def test_bad_arguments_raise(kw, match):
  args = dict(prompt=prompt_rows(), max_new_tokens=4, rng=jax.random.PRNGKey(0)) | kw
  prompt = args.pop('prompt')
  for fn in (gen.generate, gen.generate_no_cache):
    with pytest.raises(ValueError, match=match):
      fn(BASE, boxed_params(BASE), prompt, **args)


def test_zero_new_tokens():
  out = gen.generate(BASE, boxed_params(BASE), prompt_rows(), max_new_tokens=0,
                     rng=jax.random.PRNGKey(0))
  assert out.shape == (2, 0)


class LetterTokenizer:
  """Ids 1..49 are letters, 0 is eos: the duck type sample_text needs."""
  eos_id = 0
  letters = string.ascii_letters[:BASE.vocab_size - 1]

  def encode(self, text):
    return [self.letters.index(c) + 1 for c in text]

  def decode(self, ids):
    return ''.join(self.letters[i - 1] for i in ids)


def test_prompt_tokens_start_with_eos_and_keep_the_end(capsys):
  tok = LetterTokenizer()
  assert sample_cli.prompt_tokens(tok, '', max_len=32, max_new_tokens=27) == [tok.eos_id]
  ids = sample_cli.prompt_tokens(tok, tok.letters[:40], max_len=32, max_new_tokens=27)
  assert ids == tok.encode(tok.letters[35:40])
  assert 'keeping its last 5' in capsys.readouterr().err


def test_prompt_with_unknown_characters_is_named_once(capsys, tmp_path):
  from llm_jax.data.tokenizers import CharTokenizer, unknown_characters
  tok = CharTokenizer('abc ')
  assert unknown_characters(tok, 'abc cab') == {}
  assert unknown_characters(tok, 'ab éé😀') == {'é': 2, '😀': 1}
  ids = sample_cli.prompt_tokens(tok, 'ab éé😀', max_len=32, max_new_tokens=4)
  assert ids.count(tok.unk_id) == 3
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and "3 character(s)" in err and "'é' ×2" in err and "'😀' ×1" in err
  sample_cli.prompt_tokens(tok, 'abc', max_len=32, max_new_tokens=4)
  assert capsys.readouterr().err == ''


def test_sample_text_is_prompt_plus_greedy_continuation_cut_at_eos():
  tok, prompt = LetterTokenizer(), LetterTokenizer.letters[:40]
  texts = sample_cli.sample_text(BASE, boxed_params(BASE), tok, prompt, max_new_tokens=N,
                                 temperature=0.0, top_k=0, top_p=1.0, seed=0, num_samples=2)
  row = list(greedy(BASE, np.tile(tok.encode(prompt[-P:]), (2, 1)), eos_id=tok.eos_id)[0])
  if tok.eos_id in row:
    row = row[:row.index(tok.eos_id)]
  assert texts == [prompt + tok.decode(row)] * 2
