"""The encoder-decoder kind: packed rows and padding never leak across examples, scan and every remat
policy equal the plain model, the KV-cached decode equals the teacher-forced forward, the layouts run,
and full-size shapes (t5-small, t5-base, t5-v1.1-small) have Hugging Face's parameter counts.

Equivalence with Hugging Face's T5 (same weights, same logits and tokens) is in tests/convert/ and
tests/generation/.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.models import blocks, kinds, layers
from llm_jax.models.encoder_decoder import T5_LAYOUT, TRANSFORMER_LAYOUT
from llm_jax.models.layers import TransformerConfig

T5 = {k: v for k, v in T5_LAYOUT.items() if k != 'kind'}
TRANSFORMER = {k: v for k, v in TRANSFORMER_LAYOUT.items() if k != 'kind'}
V1_1 = {**T5, 'mlp_activation': 'geglu', 'tie_embeddings': False, 'rescale_output': False}
# 2 encoder and 3 decoder blocks (a stack mixed up with the other shows), grouped-query heads, few buckets
# so that the log-spaced ones are used inside 16 positions.
SMALL = TransformerConfig(vocab_size=48, num_layers=2, num_decoder_layers=3, num_heads=4, num_kv_heads=2, emb_dim=32,
                          head_dim=8, mlp_dim=64, max_len=24, init_std=0.2, relative_buckets=8,
                          relative_max_distance=16, causal=False, **T5)
S, T = 16, 12  # source and target widths of a packed row
ARGS = ('encoder_inputs', 'encoder_positions', 'encoder_segment_ids', 'decoder_inputs', 'decoder_positions',
        'decoder_segment_ids')


def config(**changes) -> TransformerConfig:
  return SMALL.replace(**changes)


def random_params(kind, seed: int = 0) -> dict:
  """Parameters of ``kind``'s shapes (``jax.eval_shape``: compiling the real init would cost seconds
  per variant): norm scales 1 + 0.3·N(0, 1), everything else N(0, init_std²)."""
  shapes = nn.meta.unbox(jax.eval_shape(kind.init, jax.random.key(0), kind.example_batch(1, 8))['params'])
  rng = np.random.default_rng(seed)
  def fill(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    return jnp.asarray(1 + 0.3 * noise if jax.tree_util.keystr(path).endswith("['scale']") else
                       kind.cfg.init_std * noise)
  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.lru_cache(maxsize=None)
def built(cfg: TransformerConfig):
  """(kind, params, jitted apply(params, *ARGS) -> logits) of ``cfg``: unrolled params for every scan_layers."""
  kind = kinds.build('encoder_decoder', cfg)
  return kind, random_params(kinds.build('encoder_decoder', cfg.replace(scan_layers=False))), jax.jit(
      lambda p, *args: kind.module.apply({'params': p}, *args))


def logits_of(cfg, params, batch: dict) -> np.ndarray:
  _, _, apply = built(cfg)
  return np.asarray(apply(params, *(jnp.asarray(batch[k]) for k in ARGS)))


def example(rng, source_len: int, target_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(source ids, target ids), tokens from [2, vocab)."""
  return rng.integers(2, SMALL.vocab_size, source_len), rng.integers(2, SMALL.vocab_size, target_len)


def row(examples, source_width: int, target_width: int, source_start: int = 0, target_start: int = 0,
        pad_rng=None) -> dict:
  """One row [1, width] per feature holding ``examples`` back to back (segment ids 1, 2, ...) from the
  given offsets; the decoder input is each target shifted right behind a start token 0. Padding is
  segment 0 with position 0, its tokens 0 or (``pad_rng``) random."""
  out = {k: np.zeros((1, source_width if k.startswith('encoder') else target_width), np.int32) for k in ARGS}
  out['targets'] = np.zeros((1, target_width), np.int32)
  if pad_rng is not None:
    for k in ('encoder_inputs', 'decoder_inputs', 'targets'):
      out[k] = pad_rng.integers(2, SMALL.vocab_size, out[k].shape).astype(np.int32)
  s, t = source_start, target_start
  for k, (source, target) in enumerate(examples, 1):
    out['encoder_inputs'][0, s:s + len(source)] = source
    out['encoder_positions'][0, s:s + len(source)] = np.arange(len(source))
    out['encoder_segment_ids'][0, s:s + len(source)] = k
    out['targets'][0, t:t + len(target)] = target
    out['decoder_inputs'][0, t:t + len(target)] = np.concatenate([[0], target[:-1]])
    out['decoder_positions'][0, t:t + len(target)] = np.arange(len(target))
    out['decoder_segment_ids'][0, t:t + len(target)] = k
    s, t = s + len(source), t + len(target)
  out['weights'] = (out['decoder_segment_ids'] > 0).astype(np.float32)
  return out


def alone(source, target) -> dict:
  return row([(source, target)], len(source), len(target))


POSITIONS = ['t5_relative', 'learned', 'sinusoidal', 'rope']


@pytest.mark.parametrize('pos', POSITIONS)
def test_packed_row_gives_each_example_its_own_logits(pos):
  """Two examples packed into one row (and right padding) give, at each one's target positions, the
  logits each gives run alone in a row of its own length: neither the encoder's self-attention, the
  decoder's, nor the cross-attention sees the other example."""
  cfg = config(pos_encoding=pos)
  _, params, _ = built(cfg)
  rng = np.random.default_rng(1)
  a, b = example(rng, 5, 4), example(rng, 7, 6)
  packed = logits_of(cfg, params, row([a, b], S, T))
  want_a, want_b = logits_of(cfg, params, alone(*a))[0], logits_of(cfg, params, alone(*b))[0]
  assert np.abs(want_a).max() > 0.2 and np.abs(want_a - want_b[:4]).max() > 1e-2  # logits that can differ
  np.testing.assert_allclose(packed[0, :4], want_a, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[0, 4:10], want_b, atol=2e-5, rtol=1e-5)
  # Another source for the first example moves its logits (cross-attention reads it) and not the second's.
  changed = logits_of(cfg, params, row([(rng.integers(2, SMALL.vocab_size, 5), a[1]), b], S, T))
  assert np.abs(changed[0, :4] - packed[0, :4]).max() > 1e-3
  np.testing.assert_allclose(changed[0, 4:10], packed[0, 4:10], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize('pos', ['t5_relative', 'learned'])
def test_padding_on_both_sides_changes_nothing_at_real_positions(pos):
  """An example placed mid-row with random padding tokens before and after it, on the encoder and the
  decoder side, gives the logits of that example alone; the padding rows' logits stay finite."""
  cfg = config(pos_encoding=pos)
  _, params, _ = built(cfg)
  rng = np.random.default_rng(2)
  a = example(rng, 6, 5)
  padded = logits_of(cfg, params, row([a], S, T, source_start=3, target_start=2, pad_rng=rng))
  want = logits_of(cfg, params, alone(*a))[0]
  np.testing.assert_allclose(padded[0, 2:7], want, atol=2e-5, rtol=1e-5)
  assert np.isfinite(padded).all()


# ---- scan and remat ------------------------------------------------------------------------------------------

def _batch(seed: int = 3) -> dict:
  """Two rows: two packed examples, and one right-padded example."""
  rng = np.random.default_rng(seed)
  first, second = row([example(rng, 5, 4), example(rng, 7, 6)], S, T), row([example(rng, 9, 8)], S, T)
  return {k: jnp.asarray(np.concatenate([first[k], second[k]])) for k in first}


BATCH = _batch()


@functools.lru_cache(maxsize=None)
def _value_and_grad(cfg: TransformerConfig):
  kind = kinds.build('encoder_decoder', cfg)
  return jax.jit(jax.value_and_grad(lambda p, batch: kind.loss(p, batch)['loss_sum']))


def _plain(variant: tuple):
  cfg = config(**dict(variant))
  _, params, _ = built(cfg)
  loss, grads = _value_and_grad(cfg)(params, BATCH)
  return cfg, params, loss, grads


def _close(got, want):
  """Gradients equal up to float32 reordering: within 1e-4 relative, or 2e-5 of the leaf's largest entry."""
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5 * max(1.0, np.abs(w).max())),
               got, want)


@pytest.mark.parametrize('variant', [(), (('pos_encoding', 'rope'), ('mlp_activation', 'geglu'))],
                         ids=['t5', 'rope_geglu'])
def test_scanned_stacks_give_the_unrolled_logits_and_gradients(variant):
  cfg, params, loss, grads = _plain(variant)
  scanned_cfg = cfg.replace(scan_layers=True)
  scanned = blocks.to_scanned(params)
  kind = kinds.build('encoder_decoder', scanned_cfg)
  abstract = nn.meta.unbox(jax.eval_shape(kind.init, jax.random.key(0), kind.example_batch(1, 8))['params'])
  assert jax.tree.structure(scanned) == jax.tree.structure(abstract)
  assert scanned['encoder']['layers']['mlp']['wi'].shape[0] == 2
  assert scanned['decoder']['layers']['cross_attention']['query'].shape[0] == 3
  got = jax.jit(lambda p, b: kind.module.apply({'params': p}, *(b[k] for k in ARGS)))(scanned, BATCH)
  np.testing.assert_allclose(np.asarray(got), logits_of(cfg, params, BATCH), atol=2e-5, rtol=1e-5)
  got_loss, got_grads = _value_and_grad(scanned_cfg)(scanned, BATCH)
  np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
  _close(got_grads, blocks.to_scanned(grads))
  jax.tree.map(np.testing.assert_array_equal, blocks.to_unrolled(scanned), params)


REMAT_CASES = [(policy, False) for policy in blocks.REMAT_POLICIES if policy != 'none'] + [
    ('full', True), ('save_named', True)]


def test_remat_cases_cover_every_policy():
  assert {p for p, _ in REMAT_CASES} | {'none'} == set(blocks.REMAT_POLICIES)


@pytest.mark.parametrize('remat,scan', REMAT_CASES, ids=[f'{p}{"_scanned" if s else ""}' for p, s in REMAT_CASES])
def test_every_remat_policy_gives_the_plain_loss_and_gradients_in_both_stacks(remat, scan):
  cfg, params, loss, grads = _plain(())
  names = layers.CHECKPOINT_NAMES if remat == 'save_named' else ()
  convert = blocks.to_scanned if scan else (lambda p: p)
  got_loss, got_grads = _value_and_grad(cfg.replace(remat=remat, remat_names=names, scan_layers=scan))(
      convert(params), BATCH)
  np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
  _close(got_grads, convert(grads))
  for stack in ('encoder', 'decoder'):  # both stacks take part in the loss
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads[stack])), stack


# ---- decoding with the KV cache ---------------------------------------------------------------------------------

def _source_batch(rng):
  """Two sources [2, S]: one whole, one right-padded (segment 0 on padding)."""
  source = rng.integers(2, SMALL.vocab_size, (2, S)).astype(np.int32)
  segments = np.ones((2, S), np.int32)
  segments[1, 9:] = 0
  return jnp.asarray(source * segments), jnp.asarray(segments)


# A decoder prompt of 1 token (the start token, as generation feeds it) or 3 (a prefill of several).
DECODE_CASES = [('t5_relative', False, 1), ('t5_relative', True, 3), ('learned', False, 3), ('learned', True, 1)]


@pytest.mark.parametrize('pos,scan,prompt_len', DECODE_CASES,
                         ids=[f'{p}_{"scanned" if s else "unrolled"}_prompt{n}' for p, s, n in DECODE_CASES])
def test_cached_decoding_equals_the_teacher_forced_forward(pos, scan, prompt_len):
  """start_decoding (prefill) + tokens_to_logits, one token at a time as the search functions feed them,
  give at every step the next-token logits of the full forward over the same prefix. The cross-attention
  keys and values are written by the prefill and never again."""
  cfg = config(pos_encoding=pos)
  _, params, _ = built(cfg)
  if scan:
    cfg, params = cfg.replace(scan_layers=True), blocks.to_scanned(params)
  kind = kinds.build('encoder_decoder', cfg)
  rng = np.random.default_rng(4)
  source, segments = _source_batch(rng)
  steps = 6
  tokens = jnp.asarray(rng.integers(2, SMALL.vocab_size, (2, prompt_len + steps)), jnp.int32)
  tokens = tokens.at[:, 0].set(kind.decoder_start_id)
  cache_len = prompt_len + steps

  @jax.jit
  def run(params, source, segments, tokens):
    prompt = tokens[:, :prompt_len]
    decoding = kind.start_decoding(params, prompt, jnp.full((2,), prompt_len), cache_len,
                                   encoder_inputs=source, encoder_segment_ids=segments)
    assert decoding.cache_batch_axis == (1 if scan else 0)
    out, cache, caches = [decoding.logits], decoding.cache, [decoding.cache]
    for i in range(steps - 1):
      logits, cache = decoding.tokens_to_logits(tokens[:, prompt_len + i][:, None], cache)
      out.append(logits)
      caches.append(cache)
    return jnp.stack(out, axis=1), caches

  got, caches = run(params, source, segments, tokens)
  b, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  full = kind.module.apply({'params': params}, source, jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (b, S)),
                           segments, tokens, positions, jnp.ones_like(tokens))
  want = np.asarray(full)[:, prompt_len - 1:t - 1]
  assert np.abs(want).max() > 0.2
  np.testing.assert_allclose(np.asarray(got), want, atol=5e-5, rtol=1e-5)

  def cross(cache):
    """{path: array} of the decoder's cross-attention cache entries."""
    flat = jax.tree_util.tree_flatten_with_path(cache)[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat if 'cross_' in jax.tree_util.keystr(p)}

  prefill = cross(caches[0])
  assert len(prefill) == (3 if scan else 3 * cfg.num_decoder_layers)  # key, value, mask per (scanned) layer
  assert all(np.abs(v).max() > 0 for k, v in prefill.items() if 'mask' not in k)
  for later in caches[1:]:
    assert cross(later).keys() == prefill.keys()
    assert all(np.array_equal(v, prefill[k]) for k, v in cross(later).items())
  # The cached cross mask [(L,) B, 1, 1, S] is the sources' padding mask: row 1 sees its first 9 tokens.
  for k, mask in prefill.items():
    if 'cross_mask' in k:
      mask = mask.reshape((-1,) + mask.shape[-4:])
      want_mask = np.broadcast_to(np.asarray(segments != 0), mask[:, :, 0, 0].shape)
      np.testing.assert_array_equal(mask[:, :, 0, 0, :], want_mask)


@pytest.mark.parametrize('pos', ['learned', 'sinusoidal'])
def test_a_left_padded_source_decodes_as_the_unpadded_source(pos):
  """Absolute positions count from a source's first token, as the seq2seq featurizer numbers them: the
  next-token logits after the prefill and after two fed tokens are those of the source without padding."""
  cfg = config(pos_encoding=pos)
  kind, params, _ = built(cfg)
  rng = np.random.default_rng(6)
  source = rng.integers(2, SMALL.vocab_size, (1, 9)).astype(np.int32)
  padded = np.concatenate([rng.integers(2, SMALL.vocab_size, (1, 4)).astype(np.int32), source], axis=1)
  segments = (np.arange(13) >= 4).astype(np.int32)[None]
  fed = jnp.asarray(rng.integers(2, SMALL.vocab_size, (1, 2)), jnp.int32)

  @jax.jit
  def logits(source, segments):
    decoding = kind.start_decoding(params, jnp.zeros((1, 1), jnp.int32), jnp.ones((1,)), 4, encoder_inputs=source,
                                   encoder_segment_ids=segments)
    out, cache = [decoding.logits], decoding.cache
    for i in range(2):
      step, cache = decoding.tokens_to_logits(fed[:, i:i + 1], cache)
      out.append(step)
    return jnp.stack(out)

  want = np.asarray(logits(source, np.ones_like(source)))
  np.testing.assert_allclose(np.asarray(logits(padded, segments)), want, atol=2e-5, rtol=1e-5)


def test_beam_search_rows_keep_their_own_source():
  """Beam search reorders the cache's rows (cross-attention's included): decoding two sources together
  gives each the tokens it gets decoded alone."""
  from llm_jax.generation import api
  cfg = config()
  kind, params, _ = built(cfg)
  source, segments = _source_batch(np.random.default_rng(5))
  start = np.zeros((2, 1), np.int32)
  settings = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, eos_ids=(1,))
  both = api.decode(kind, params, start, inputs={'encoder_inputs': source, 'encoder_segment_ids': segments},
                    **settings)
  n = int(segments[1].sum())
  second = api.decode(kind, params, start[1:], inputs={'encoder_inputs': source[1:, :n]}, **settings)
  np.testing.assert_array_equal(np.asarray(both.tokens)[1], np.asarray(second.tokens)[0])
  np.testing.assert_allclose(np.asarray(both.scores)[1], np.asarray(second.scores)[0], rtol=1e-5)
  assert not np.array_equal(np.asarray(both.tokens)[0], np.asarray(both.tokens)[1])


# ---- layouts and full-size shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize('layout', ['transformer', 'v1_1'])
def test_layouts_initialize_and_run(layout):
  """The original Transformer (post-LN, sinusoidal, biases, scaled attention) and T5 v1.1 (gated GELU,
  untied output, no rescaling) initialize with their own parameters and run a loss and its gradient."""
  cfg = SMALL.replace(init_std=0.02, **(TRANSFORMER if layout == 'transformer' else V1_1))
  kind = kinds.build('encoder_decoder', cfg)
  params = nn.meta.unbox(kind.init(jax.random.key(0), kind.example_batch(1, 8))['params'])
  flat = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  has = lambda fragment: any(fragment in path for path in flat)
  if layout == 'transformer':
    assert has("['query_bias']") and has("['wo_bias']") and has("['attention_norm']['bias']")
    assert not has('relative_bias') and not has('position_embed') and not has('final_norm')  # post-LN
    assert not has('lm_head')
  else:
    assert has("['wi_gate']") and has("['lm_head']") and has("['encoder']['relative_bias']")
    assert has("['decoder']['relative_bias']") and not has("['query_bias']")
  assert has("['decoder']['layer_2']['cross_attention']") and not has("['encoder']['layer_0']['cross_attention']")
  loss, grads = _value_and_grad(cfg)(params, BATCH)
  assert np.isfinite(float(loss)) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  metrics = kind.metrics(kind.loss(params, BATCH), 'train_')
  assert set(metrics) == {'train_loss', 'train_perplexity', 'train_token_accuracy'}
  np.testing.assert_allclose(float(metrics['train_loss']), float(loss) / float(BATCH['weights'].sum()), rtol=1e-5)


def _count(cfg: TransformerConfig) -> int:
  shapes = kinds.build('encoder_decoder', cfg).abstract_params(16)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


# (layers, width, heads, feed-forward, layout) -> Hugging Face's count (T5ForConditionalGeneration's
# parameters, the tied embedding once): t5-small and t5-base, and google/t5-v1_1-small (untied lm_head).
HF_COUNTS = {
    't5-small': ((6, 512, 8, 2048, T5), 60_506_624),
    't5-base': ((12, 768, 12, 3072, T5), 222_903_552),
    't5-v1_1-small': ((8, 512, 6, 1024, V1_1), 76_961_152),
}


@pytest.mark.parametrize('name', HF_COUNTS)
def test_full_size_parameter_counts_equal_hugging_faces(name):
  """Counted from shapes alone (jax.eval_shape); the numbers are those transformers' T5Config +
  T5ForConditionalGeneration give on the meta device (test_counts_match_transformers recounts them)."""
  (num_layers, width, heads, ff, layout), want = HF_COUNTS[name]
  cfg = TransformerConfig(vocab_size=32128, num_layers=num_layers, num_decoder_layers=num_layers,
                          num_heads=heads, num_kv_heads=heads, emb_dim=width, head_dim=64, mlp_dim=ff, max_len=512,
                          relative_buckets=32, relative_max_distance=128, causal=False, **layout)
  assert _count(cfg) == want
  big = cfg.replace(scan_layers=True)
  assert _count(big) == want


def test_counts_match_transformers():
  """The HF_COUNTS numbers from transformers itself (meta device: no memory, no weights)."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  for name, ((num_layers, width, heads, ff, layout), want) in HF_COUNTS.items():
    hf = transformers.T5Config(vocab_size=32128, d_model=width, d_kv=64, d_ff=ff, num_layers=num_layers,
                               num_heads=heads, relative_attention_num_buckets=32,
                               feed_forward_proj='relu' if layout is T5 else 'gated-gelu',
                               tie_word_embeddings=layout['tie_embeddings'])
    with torch.device('meta'):
      model = transformers.T5ForConditionalGeneration(hf)
    count = sum(p.numel() for p in model.parameters())  # a tied lm_head once
    if not layout['tie_embeddings'] and model.lm_head.weight is model.shared.weight:
      count += model.lm_head.weight.numel()  # transformers 5 ties it anyway; the published v1.1 has its own
    assert count == want, name


def test_t5_init_scheme_draws_t5s_stds():
  """init_scheme='t5': each parameter's std is Mesh TensorFlow's fan-in scaling (as transformers'
  T5PreTrainedModel._init_weights with factor 1): measured on a model large enough to estimate it."""
  import flax.linen as nn
  from llm_jax.models import kinds
  from llm_jax.models.encoder_decoder import T5_LAYOUT
  from llm_jax.models.layers import TransformerConfig
  fields = {k: v for k, v in T5_LAYOUT.items() if k != 'kind'}
  d, h, n, f = 128, 16, 8, 256
  cfg = TransformerConfig(vocab_size=500, num_layers=1, num_decoder_layers=1, emb_dim=d, head_dim=h, num_heads=n,
                          num_kv_heads=n, mlp_dim=f, max_len=16, **{**fields, 'tie_embeddings': False})
  kind = kinds.build('encoder_decoder', cfg)
  params = nn.meta.unbox(kind.init(jax.random.key(0), kind.example_batch(1, 8))['params'])
  want = {'token_embed': 1.0, 'lm_head': 1.0, 'query': (d * h) ** -0.5, 'key': d ** -0.5, 'value': d ** -0.5,
          'out': (n * h) ** -0.5, 'wi': d ** -0.5, 'wo': f ** -0.5}
  seen = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [getattr(p, 'key', '') for p in path]
    role = next((r for r in want if r in names), None)
    if role is None or 'scale' in names:
      continue
    seen.add(role)
    assert abs(float(np.std(leaf)) / want[role] - 1) < 0.1, (names, float(np.std(leaf)), want[role])
  assert seen == set(want)
