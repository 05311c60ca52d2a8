"""Generation from a model kind: ``decode`` (llm_jax's names) and ``generate`` (Hugging Face's).

``decode(kind, params, prompt, ...)`` is what the sample command, the training loop's
samples and the bench call: left-padded prompts in, new tokens out, one compiled
program per (model, shapes, settings); the rng, eos ids and pad id are traced, so new
seeds cost no compile.

``generate(model, input_ids, ...)`` takes Hugging Face's arguments and returns what its
``model.generate`` returns: the prompt followed by the new tokens, cropped after the
longest one, ``pad_token_id`` after each row's end, rows repeated
``num_return_sequences`` times; ``return_dict_in_generate=True`` adds the beam scores.
For an encoder-decoder (a kind with ``encoder_decoder`` set) ``input_ids`` are the source,
the decoder starts from the model's decoder start token, and the sequences are that token
followed by the new ones (``max_length`` counts the start token), as Hugging Face's are.
"""

import dataclasses
import functools
from typing import Any, NamedTuple, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.generation import search
from llm_jax.models import kinds


class Generated(NamedTuple):
  """``decode``'s result: R = num_return_sequences rows per prompt, best beam first."""
  tokens: Any    # int32 [B, R, N]: new tokens, pad_id after each row's end
  lengths: Any   # int32 [B, R]: new tokens per row, its eos included
  scores: Any    # float32 [B, R]: beam scores (sum of log-probabilities / length ** length_penalty); None when sampling


class GenerateOutput(NamedTuple):
  """``generate(..., return_dict_in_generate=True)``, named as Hugging Face names them."""
  sequences: np.ndarray         # int [B·R, P + n]: prompt and new tokens
  sequences_scores: Optional[np.ndarray]  # [B·R] beam scores; None when sampling
  lengths: np.ndarray           # [B·R] new tokens per row


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to choose tokens (static: each distinct value compiles once)."""
  max_new_tokens: int
  num_beams: int = 1
  temperature: float = 0.0      # 0: greedy (num_beams 1)
  top_k: int = 0
  top_p: float = 1.0
  length_penalty: float = 1.0
  early_stopping: Union[bool, str] = False
  min_new_tokens: int = 0
  num_return_sequences: int = 1
  eos_count: int = 0            # how many eos ids there are (their values are traced)


def _params(params):
  """The plain 'params' tree: unboxes nn.LogicallyPartitioned leaves; takes {'params': ...} too."""
  params = nn.meta.unbox(params)
  if isinstance(params, dict) and set(params) == {'params'}:
    params = params['params']
  return params


def check(max_len: int, prompt_shape, s: Settings) -> None:
  """ValueError (one line: the argument and the fix) for settings that cannot run on a model of
  ``max_len`` positions."""
  b, p = prompt_shape
  if b == 0 or p == 0:
    raise ValueError(f'the prompt is empty (shape {(b, p)}); give at least one token per row '
                     "(e.g. the tokenizer's eos token as a start token).")
  if s.num_beams < 1:
    raise ValueError(f'num_beams={s.num_beams} must be at least 1 (1: no beam search).')
  if s.max_new_tokens < 1:
    raise ValueError(f'max_new_tokens={s.max_new_tokens} must be at least 1 (with max_length: give a max_length '
                     f'longer than the prompt\'s {p} tokens).')
  if p + s.max_new_tokens > max_len:
    raise ValueError(f'the prompt\'s {p} tokens + max_new_tokens {s.max_new_tokens} = {p + s.max_new_tokens} exceed '
                     f'the model\'s {max_len} positions; lower max_new_tokens (or max_length to at most '
                     f'{max_len}) or shorten the prompt.')
  if s.num_return_sequences < 1:
    raise ValueError(f'num_return_sequences={s.num_return_sequences} must be at least 1.')
  if s.num_beams > 1 and s.num_return_sequences > s.num_beams:
    raise ValueError(f'num_return_sequences={s.num_return_sequences} is more than num_beams={s.num_beams}; beam '
                     f'search returns at most one sequence per beam: raise num_beams or lower num_return_sequences.')
  if s.num_beams == 1 and s.temperature == 0 and s.num_return_sequences > 1:
    raise ValueError(f'num_return_sequences={s.num_return_sequences} with greedy decoding would return the same '
                     'sequence each time; sample (do_sample=True / a temperature > 0) or use num_beams.')
  if s.num_beams > 1 and s.temperature != 0:
    raise ValueError('beam search with sampling (num_beams > 1 and do_sample / a temperature > 0) is not '
                     'supported; use num_beams=1 to sample, or greedy beam search.')
  if s.early_stopping not in (True, False, 'never'):
    raise ValueError(f"early_stopping={s.early_stopping!r} must be True, False or 'never'.")
  if s.temperature < 0:
    raise ValueError(f'temperature={s.temperature} must be >= 0 (0: greedy).')
  if not 0 < s.top_p <= 1:
    raise ValueError(f'top_p={s.top_p} must be in (0, 1] (1: off).')
  if s.top_k < 0:
    raise ValueError(f'top_k={s.top_k} must be >= 0 (0: off).')
  if s.min_new_tokens < 0:
    raise ValueError(f'min_new_tokens={s.min_new_tokens} must be >= 0.')


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(int32 [B, P] left-padded prompts, int32 [B] lengths) from token lists of any lengths."""
  p = max(len(row) for row in prompts)
  out = np.full((len(prompts), p), pad_id, np.int32)
  for i, row in enumerate(prompts):
    if len(row):
      out[i, p - len(row):] = row
  return out, np.asarray([len(row) for row in prompts], np.int32)


def _decode(kind_name, cfg, settings: Settings, params, prompt, lengths, rng, eos_ids, pad_id, inputs):
  s = settings
  kind = kinds.build(kind_name, cfg)
  b, p = prompt.shape
  r = 1 if s.num_beams > 1 else s.num_return_sequences
  if r > 1:  # independent samples of each prompt: its rows side by side
    prompt, lengths = jnp.repeat(prompt, r, axis=0), jnp.repeat(lengths, r)
    inputs = {k: jnp.repeat(v, r, axis=0) for k, v in inputs.items()}
  decoding = kind.start_decoding(params, prompt, lengths, cache_len=p + s.max_new_tokens, **inputs)
  eos = tuple(eos_ids[i] for i in range(s.eos_count))
  if s.num_beams > 1:
    out = search.beam_search(decoding, num_beams=s.num_beams, max_new_tokens=s.max_new_tokens, eos_ids=eos,
                             pad_id=pad_id, length_penalty=s.length_penalty, early_stopping=s.early_stopping,
                             min_new_tokens=s.min_new_tokens)
    k = s.num_return_sequences
    return Generated(out.tokens[:, :k], out.lengths[:, :k], out.scores[:, :k])
  out = search.sample(decoding, max_new_tokens=s.max_new_tokens, rng=rng, temperature=s.temperature, top_k=s.top_k,
                      top_p=s.top_p, eos_ids=eos, pad_id=pad_id, min_new_tokens=s.min_new_tokens)
  return Generated(out.tokens.reshape(b, r, -1), out.lengths.reshape(b, r), None)


# XLA:CPU's YNNPACK dot fusions, which llm_jax turns off for the whole process (llm_jax/__init__.py:
# slower at training shapes), multiply decoding's few rows by a weight matrix about twice as fast
# (BENCHMARKS.md); decoding programs ask for them back. Other backends get no options.
CPU_DECODE_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


@functools.lru_cache(maxsize=None)
def compiled(backend: str):
  """``_decode`` under ``jax.jit`` for ``backend`` (one cache of compiled programs per backend)."""
  options = CPU_DECODE_OPTIONS if backend == 'cpu' else None
  return jax.jit(_decode, static_argnames=('kind_name', 'cfg', 'settings'), compiler_options=options)


def decode(kind, params, prompt, *, lengths=None, max_new_tokens: int, rng=None, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, num_beams: int = 1, length_penalty: float = 1.0,
           early_stopping: Union[bool, str] = False, min_new_tokens: int = 0, num_return_sequences: int = 1,
           eos_ids: Sequence[int] = (), pad_id: Optional[int] = None, inputs: Optional[dict] = None) -> Generated:
  """New tokens after ``prompt`` int32 [B, P] (left-padded; ``lengths`` [B] the tokens of each row,
  default P) from the model ``kind`` (a ``kinds.ModelKind`` that generates) with ``params``.
  ``inputs`` are the kind's other arrays for ``start_decoding``, B rows each (an encoder-decoder's
  ``encoder_inputs`` and ``encoder_segment_ids``; ``encoder_inputs`` for short); the decoder
  prompt of an encoder-decoder is not padded.

  ``temperature`` 0 with ``num_beams`` 1 is greedy; > 0 samples (``search.sample_logits``)
  with key ``rng``; ``num_beams`` > 1 is beam search (``search.beam_search``). ``pad_id``
  (default: the first eos id, else 0) fills each row after its end. ValueError (one line)
  for settings that cannot run.
  """
  if not hasattr(kind, 'start_decoding'):
    raise ValueError(f'model.kind={kind.name!r} does not generate text; decode with a decoder.')
  eos_ids = tuple(int(e) for e in (eos_ids or ()))
  settings = Settings(max_new_tokens=int(max_new_tokens), num_beams=int(num_beams), temperature=float(temperature),
                      top_k=int(top_k), top_p=float(top_p), length_penalty=float(length_penalty),
                      early_stopping=early_stopping, min_new_tokens=int(min_new_tokens),
                      num_return_sequences=int(num_return_sequences), eos_count=len(eos_ids))
  if np.ndim(prompt) != 2:
    raise ValueError(f'the prompt must be token ids [batch, length], got shape {np.shape(prompt)}.')
  check(kind.cfg.max_len, np.shape(prompt), settings)
  b, p = np.shape(prompt)
  lengths = np.full((b,), p, np.int32) if lengths is None else np.asarray(lengths, np.int32)
  if lengths.shape != (b,) or lengths.min() < 1 or lengths.max() > p:
    raise ValueError(f'lengths must give each of the {b} prompts 1..{p} tokens, got {lengths.tolist()}.')
  inputs = _kind_inputs(kind, b, inputs)
  if inputs and lengths.min() < p:
    raise ValueError(f'the decoder prompts of model.kind={kind.name!r} must all have {p} tokens (no padding), '
                     f'got lengths {lengths.tolist()}.')
  if pad_id is None:
    pad_id = eos_ids[0] if eos_ids else 0
  rng = jax.random.key(0) if rng is None else rng
  cfg = dataclasses.replace(kind.cfg, decode=False)
  return compiled(jax.default_backend())(
      kind.name, cfg, settings, _params(params), jnp.asarray(prompt, jnp.int32), jnp.asarray(lengths), rng,
      jnp.asarray(eos_ids + (0,), jnp.int32), jnp.int32(pad_id), inputs)


def _kind_inputs(kind, b: int, inputs: Optional[dict]) -> dict:
  """The arrays ``kind.start_decoding`` takes beside the prompt: {} for a decoder; an encoder-decoder's
  source (``encoder_inputs`` [B, S], ``encoder_segment_ids`` [B, S] defaulting to all ones)."""
  if not getattr(kind, 'encoder_decoder', False):
    if inputs:
      raise ValueError(f'model.kind={kind.name!r} decodes from its prompt alone; give no inputs '
                       f'({", ".join(inputs)}).')
    return {}
  if not inputs or 'encoder_inputs' not in inputs:
    raise ValueError(f'model.kind={kind.name!r} decodes from a source: give inputs={{"encoder_inputs": ids [B, S]}}.')
  source = jnp.asarray(inputs['encoder_inputs'], jnp.int32)
  if source.ndim != 2 or source.shape[0] != b or source.shape[1] == 0:
    raise ValueError(f'encoder_inputs must be token ids [{b}, S >= 1] (one source per prompt), got shape '
                     f'{tuple(source.shape)}.')
  segments = inputs.get('encoder_segment_ids')
  segments = jnp.ones_like(source) if segments is None else jnp.asarray(segments, jnp.int32)
  if segments.shape != source.shape:
    raise ValueError(f'encoder_segment_ids has shape {tuple(segments.shape)}, encoder_inputs {tuple(source.shape)}.')
  if not bool(jnp.all(jnp.any(segments != 0, axis=1))):
    raise ValueError('a source row is all padding (its attention mask is all zeros); every source needs a token.')
  return {'encoder_inputs': source, 'encoder_segment_ids': segments}


def _mask_lengths(input_ids: np.ndarray, attention_mask) -> np.ndarray:
  """Tokens per row from a left-padding attention mask; ValueError for any other padding."""
  b, p = input_ids.shape
  if attention_mask is None:
    return np.full((b,), p, np.int32)
  mask = np.asarray(attention_mask).astype(bool)
  if mask.shape != (b, p):
    raise ValueError(f'attention_mask has shape {mask.shape}, input_ids {(b, p)}; give one mask entry per token.')
  lengths = mask.sum(axis=1).astype(np.int32)
  if not np.array_equal(mask, np.arange(p)[None, :] >= (p - lengths)[:, None]):
    raise ValueError("attention_mask must be left padding (zeros before each row's tokens, ones after): batch "
                     "prompts with tokenizer.padding_side='left', or pass token lists of different lengths.")
  if lengths.min() < 1:
    raise ValueError('a row of attention_mask is all zeros; every prompt needs at least one token.')
  return lengths


def generate(model, input_ids, attention_mask=None, *, max_length: Optional[int] = None,
             max_new_tokens: Optional[int] = None, min_length: int = 0, min_new_tokens: int = 0,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 50, top_p: float = 1.0,
             num_beams: int = 1, length_penalty: float = 1.0, early_stopping: Union[bool, str] = False,
             num_return_sequences: int = 1, eos_token_id: Union[None, int, Sequence[int]] = None,
             pad_token_id: Optional[int] = None, seed: int = 0, return_dict_in_generate: bool = False):
  """Hugging Face's ``model.generate(input_ids, ...)`` for an llm_jax model.

  ``model`` has ``.kind`` and ``.params`` (``llm_jax.from_pretrained``'s result, for a
  run's workdir or a Hugging Face directory); its tokenizer's eos token is the default
  ``eos_token_id``. ``input_ids`` is int [B, P] (with ``attention_mask`` for left padding)
  or a list of token lists of different lengths (left-padded here). The arguments mean
  what they mean in Hugging Face, defaults included: ``max_length`` counts the prompt
  (default 20 when neither it nor ``max_new_tokens`` is given; ``max_new_tokens`` wins when
  both are); ``min_length`` counts the prompt too; ``top_k`` 50 applies when sampling;
  ``early_stopping`` True | False | 'never'. ``seed`` keys the sampling.

  Returns int32 sequences [B·R, P + n] (R = num_return_sequences, n the longest new row),
  or a ``GenerateOutput`` when ``return_dict_in_generate``.
  """
  if getattr(model.kind, 'encoder_decoder', False):
    return _generate_seq2seq(model, input_ids, attention_mask, max_length=max_length, max_new_tokens=max_new_tokens,
                             min_length=min_length, min_new_tokens=min_new_tokens, do_sample=do_sample,
                             temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
                             length_penalty=length_penalty, early_stopping=early_stopping,
                             num_return_sequences=num_return_sequences, eos_token_id=eos_token_id,
                             pad_token_id=pad_token_id, seed=seed, return_dict_in_generate=return_dict_in_generate)
  if isinstance(input_ids, (list, tuple)) and input_ids and isinstance(input_ids[0], (list, tuple)):
    if attention_mask is not None:
      raise ValueError('give attention_mask with an input_ids array, not with token lists (they are padded here).')
    input_ids, lengths = left_padded(input_ids, 0 if pad_token_id is None else pad_token_id)
  else:
    input_ids = np.asarray(input_ids)
    if input_ids.ndim == 1:
      input_ids = input_ids[None]
    if input_ids.ndim != 2:
      raise ValueError(f'input_ids must be token ids [batch, length], got shape {input_ids.shape}.')
    lengths = _mask_lengths(input_ids, attention_mask)
  p = input_ids.shape[1]
  if max_new_tokens is None:
    max_length = 20 if max_length is None else max_length
    if max_length <= p:
      raise ValueError(f'max_length={max_length} leaves no room after the prompt\'s {p} tokens (max_length counts '
                       f'the prompt); raise it above {p} or give max_new_tokens.')
    max_new_tokens = max_length - p
  eos = _eos_ids(model, eos_token_id)
  pad_token_id = _fill_value(pad_token_id, eos, num_beams)
  temperature = float(temperature) if do_sample else 0.0
  if do_sample and temperature == 0:
    raise ValueError('do_sample=True needs a temperature > 0 (do_sample=False is greedy).')
  out = decode(model.kind, model.params, input_ids, lengths=lengths, max_new_tokens=max_new_tokens,
               rng=jax.random.key(seed), temperature=temperature, top_k=top_k if do_sample else 0,
               top_p=top_p if do_sample else 1.0, num_beams=num_beams, length_penalty=length_penalty,
               early_stopping=early_stopping, min_new_tokens=max(min_new_tokens, min_length - p),
               num_return_sequences=num_return_sequences, eos_ids=eos, pad_id=pad_token_id)
  tokens, new_lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  b, r, _ = tokens.shape
  n = int(new_lengths.max())
  prompts = np.repeat(input_ids.astype(np.int32), r, axis=0)
  sequences = np.concatenate([prompts, tokens.reshape(b * r, -1)[:, :n]], axis=1)
  if not return_dict_in_generate:
    return sequences
  scores = None if out.scores is None else np.asarray(out.scores).reshape(-1)
  return GenerateOutput(sequences, scores, new_lengths.reshape(-1))


def _generate_seq2seq(model, input_ids, attention_mask, *, max_length, max_new_tokens, min_length, min_new_tokens,
                      do_sample, temperature, top_k, top_p, num_beams, length_penalty, early_stopping,
                      num_return_sequences, eos_token_id, pad_token_id, seed, return_dict_in_generate):
  """``generate`` for an encoder-decoder: ``input_ids`` [B, S] (padded either side, ``attention_mask``
  marking the tokens; or token lists, right-padded here) are the source; sequences start with the
  decoder start token, and max_length / min_length count it."""
  if isinstance(input_ids, (list, tuple)) and input_ids and isinstance(input_ids[0], (list, tuple)):
    if attention_mask is not None:
      raise ValueError('give attention_mask with an input_ids array, not with token lists (they are padded here).')
    width = max(len(row) for row in input_ids)
    attention_mask = np.asarray([[1] * len(row) + [0] * (width - len(row)) for row in input_ids])
    input_ids = np.asarray([list(row) + [0] * (width - len(row)) for row in input_ids])
  source = np.asarray(input_ids)
  if source.ndim == 1:
    source = source[None]
  if source.ndim != 2:
    raise ValueError(f'input_ids must be token ids [batch, length], got shape {source.shape}.')
  mask = np.ones_like(source) if attention_mask is None else np.asarray(attention_mask)
  if mask.shape != source.shape:
    raise ValueError(f'attention_mask has shape {mask.shape}, input_ids {source.shape}; give one mask entry per token.')
  if max_new_tokens is None:
    max_length = 20 if max_length is None else max_length
    if max_length <= 1:
      raise ValueError(f'max_length={max_length} leaves no room after the decoder start token (max_length counts '
                       'it); raise it above 1 or give max_new_tokens.')
    max_new_tokens = max_length - 1
  start = getattr(model.kind, 'decoder_start_id', 0)
  eos = _eos_ids(model, eos_token_id)
  b = source.shape[0]
  prompt = np.full((b, 1), start, np.int32)
  temperature = float(temperature) if do_sample else 0.0
  if do_sample and temperature == 0:
    raise ValueError('do_sample=True needs a temperature > 0 (do_sample=False is greedy).')
  out = decode(model.kind, model.params, prompt, max_new_tokens=max_new_tokens, rng=jax.random.key(seed),
               temperature=temperature, top_k=top_k if do_sample else 0, top_p=top_p if do_sample else 1.0,
               num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
               min_new_tokens=max(min_new_tokens, min_length - 1), num_return_sequences=num_return_sequences,
               eos_ids=eos, pad_id=_fill_value(0 if pad_token_id is None else pad_token_id, eos, num_beams),
               inputs={'encoder_inputs': source, 'encoder_segment_ids': (mask != 0).astype(np.int32)})
  tokens, new_lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  r = tokens.shape[1]
  n = int(new_lengths.max())
  sequences = np.concatenate([np.repeat(prompt, r, axis=0), tokens.reshape(b * r, -1)[:, :n]], axis=1)
  if not return_dict_in_generate:
    return sequences
  scores = None if out.scores is None else np.asarray(out.scores).reshape(-1)
  return GenerateOutput(sequences, scores, new_lengths.reshape(-1))


def _fill_value(pad_token_id, eos: tuple[int, ...], num_beams: int):
  """What follows a row's end in ``generate``'s sequences: ``pad_token_id``, except that Hugging Face's
  beam search fills with the first eos id when ``pad_token_id`` is 0 or None (``pad or eos``)."""
  if num_beams > 1 and not pad_token_id and eos:
    return eos[0]
  return pad_token_id


def _eos_ids(model, eos_token_id) -> tuple[int, ...]:
  """The eos ids: those given ([] for none), else the model's (``model.eos_id``, else its tokenizer's)."""
  if eos_token_id is None:
    eos_token_id = getattr(model, 'eos_id', None)
  if eos_token_id is None:
    tokenizer = getattr(model, 'tokenizer', None)
    eos_token_id = getattr(tokenizer, 'eos_id', None)
  if eos_token_id is None:
    return ()
  return tuple(int(e) for e in np.atleast_1d(eos_token_id))
