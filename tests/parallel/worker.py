"""On 8 simulated CPU devices: every strategy and pmap train the shared run; restore across meshes.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.parallel.worker OUT_DIR [encoder|encoder_decoder]

(started by tests/parallel/conftest.py). Writes OUT_DIR/results.json, one entry per
run: the per-step losses, the per-device and replicated bytes of params + optimizer
state, every parameter's shard shape, and (decoder, not pmap) the greedy and beam-search
tokens of two prompts decoded from the trained parameters where they lie, under the
run's mesh and rules; an entry with 'error' holds the traceback.
Also OUT_DIR/init.npz (the first strategy's initial state) and checkpoints for the
cross-mesh restore: fsdp=8 saves its trained state to OUT_DIR/ckpt_fsdp; the
fsdp=4×tensor=2 run restores it (compared bitwise here) and saves it again to
OUT_DIR/ckpt_fsdp_tensor; the 1-device pytest process restores both.

Every run starts from the same initial state: the first ('fsdp') initializes it on its
mesh, the others receive it with ``jax.device_put`` onto their own shardings, so each
strategy compiles its train step and not the (slower to compile) init again.

With ``encoder`` it trains the encoder (masked LM) under ENCODER_RUNS instead and writes
OUT_DIR/results_encoder.json and OUT_DIR/init_encoder.npz (no checkpoints). With
``encoder_decoder`` it trains the T5-layout encoder-decoder under ENCODER_DECODER_RUNS, writes
OUT_DIR/results_encoder_decoder.json, OUT_DIR/init_encoder_decoder.npz and the fsdp run's trained
parameters (OUT_DIR/fsdp_trained_encoder_decoder.npz), and (not pmap) greedy and beam-search
translations of SOURCES decoded under each mesh from the initial and from the trained parameters.
"""

import json
import pathlib
import sys
import traceback

import jax
import numpy as np

from llm_jax import checkpoint as ckpt_lib
from llm_jax import parallel
from llm_jax.train import loop
from tests.parallel import common

RUNS = ('fsdp', 'data', 'tensor', 'data_fsdp', 'fsdp_tensor', 'data_fsdp_tensor', 'pmap')
EVALUATED = ('fsdp_tensor', 'pmap')
ENCODER_RUNS = ('fsdp', 'data', 'tensor', 'data_fsdp_tensor', 'pmap')
ENCODER_DECODER_RUNS = ('fsdp', 'data', 'tensor', 'fsdp_tensor', 'data_fsdp_tensor', 'pmap')
RUNS_OF = {'decoder': RUNS, 'encoder': ENCODER_RUNS, 'encoder_decoder': ENCODER_DECODER_RUNS}


def describe(state) -> dict:
  both = (state.params, state.opt_state)
  shards = {jax.tree_util.keystr(p): [list(x.shape), list(x.sharding.shard_shape(x.shape))]
            for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  return dict(bytes_per_device=parallel.per_device_bytes(both),
              bytes_replicated=sum(x.nbytes for x in jax.tree.leaves(both)), shards=shards)


def run(name: str, tmp: pathlib.Path, out: pathlib.Path, shared: dict, kind: str = 'decoder') -> dict:
  extra = {'parallelism': 'pmap'} if name == 'pmap' else parallel.strategy_overrides(name)
  config = common.config(tmp, kind, **extra)
  trainer = loop.build_trainer(config, str(tmp / f'work_{kind}'))
  suffix = '' if kind == 'decoder' else f'_{kind}'
  decoder = kind == 'decoder'
  result = dict(mesh=dict(trainer.mesh.shape))
  with trainer.context():
    if 'init' not in shared:
      state = trainer.init()
      shared['init'] = jax.device_get(state)
      np.savez(out / f'init{suffix}.npz', **common.flatten(state))
    else:
      state = jax.device_put(shared['init'], trainer.state_shardings)
    if decoder and name == 'fsdp_tensor':
      result['restore'] = restore_here(trainer, out)
    result.update(describe(state))
    seq2seq = kind == 'encoder_decoder' and name != 'pmap'
    if seq2seq:  # before training too: the initial state is the same on every mesh
      result['decoded_init'] = translate(trainer.kind, state.params, trainer.dataset.tokenizer)
    losses = []
    for step in range(common.STEPS):
      state, metrics = trainer.train_step(state, trainer.device_batch(trainer.dataset.train_batch(step)))
      losses.append(float(metrics['train_loss']))
    result['losses'] = losses
    if name in EVALUATED:
      result['eval_loss'] = trainer.evaluate(state.params)['eval_loss']
    if decoder and name != 'pmap':
      result['decoded'] = decode(trainer.kind, state.params)
    if seq2seq:
      result['decoded'] = translate(trainer.kind, state.params, trainer.dataset.tokenizer)
    if kind == 'encoder_decoder' and name == 'fsdp':
      np.savez(out / f'fsdp_trained{suffix}.npz', **common.flatten(state.params))
    if decoder and name == 'fsdp':
      save(state, out / 'ckpt_fsdp', config)
      np.savez(out / 'fsdp_trained.npz', **common.flatten(state))
  return result


PROMPTS = ([5, 6, 7], [8, 9, 10, 11, 12, 13, 14])


def decode(kind, params) -> dict:
  """Greedy and beam-search tokens of PROMPTS (one left-padded batch) from ``params`` as they are placed."""
  from llm_jax import generation
  prompt, lengths = generation.left_padded(PROMPTS)
  greedy = generation.decode(kind, params, prompt, lengths=lengths, max_new_tokens=10)
  beams = generation.decode(kind, params, prompt, lengths=lengths, max_new_tokens=10, num_beams=3,
                            num_return_sequences=2, eos_ids=(1,))
  return dict(greedy=np.asarray(greedy.tokens).tolist(), beam=np.asarray(beams.tokens).tolist(),
              beam_scores=np.asarray(beams.scores).tolist())


SOURCES = ('the quick brown fox', 'lazy dog and runs')


def translate(kind, params, tokenizer) -> dict:
  """Greedy and beam-search tokens of an encoder-decoder for SOURCES (one right-padded batch, each source
  ending in eos as the seq2seq featurizer makes it) from ``params`` as they are placed."""
  from llm_jax import generation
  from llm_jax.generation import text
  inputs = text.source_batch([list(tokenizer.encode(s)) + [tokenizer.eos_id] for s in SOURCES], tokenizer.pad_id)
  start = np.full((len(SOURCES), 1), kind.decoder_start_id, np.int32)
  greedy = generation.decode(kind, params, start, max_new_tokens=10, inputs=inputs, pad_id=tokenizer.pad_id)
  beams = generation.decode(kind, params, start, max_new_tokens=10, num_beams=3, num_return_sequences=2,
                            eos_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id, inputs=inputs)
  return dict(greedy=np.asarray(greedy.tokens).tolist(), beam=np.asarray(beams.tokens).tolist(),
              beam_scores=np.asarray(beams.scores).tolist())


def save(state, workdir: pathlib.Path, config) -> None:
  ckpts = ckpt_lib.Checkpoints(str(workdir), config.checkpoint)
  ckpts.save(common.STEPS, state, {'data_position': common.STEPS, 'model_kind': config.model.kind})
  ckpts.close()


def restore_here(trainer, out: pathlib.Path) -> dict:
  """Restores the fsdp=8 checkpoint onto this (fsdp=4×tensor=2) mesh, compares, saves again."""
  ckpts = ckpt_lib.Checkpoints(str(out / 'ckpt_fsdp'), trainer.config.checkpoint, read_only=True)
  state, _ = ckpts.restore(common.STEPS, trainer.abstract_state)
  ckpts.close()
  saved = np.load(out / 'fsdp_trained.npz')
  here = common.flatten(state)
  unequal = [k for k in saved.files if not np.array_equal(saved[k], here[k])]
  placed = jax.tree.leaves(jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim),
                                        state, trainer.state_shardings))
  save(state, out / 'ckpt_fsdp_tensor', trainer.config)
  return dict(unequal=unequal, compared=len(saved.files), on_target_shardings=all(placed))


def main(out_dir: str, kind: str = 'decoder') -> None:
  out = pathlib.Path(out_dir)
  tmp = out / 'tmp'
  tmp.mkdir(parents=True, exist_ok=True)
  assert jax.device_count() == 8, f'needs 8 devices, got {jax.device_count()} (set XLA_FLAGS)'
  results, shared = {}, {}
  suffix = '' if kind == 'decoder' else f'_{kind}'
  for name in RUNS_OF[kind]:
    try:
      results[name] = run(name, tmp, out, shared, kind)
    except Exception:  # pylint: disable=broad-except
      results[name] = dict(error=traceback.format_exc())
    print(f'[worker] {kind} {name}: {results[name].get("losses", "error")}', flush=True)
    (out / f'results{suffix}.json').write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
  main(*sys.argv[1:])
