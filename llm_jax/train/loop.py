"""``train_and_evaluate(config, workdir)``: the training loop, callable without flags.

Resumes by itself from the newest finished checkpoint in WORKDIR; otherwise starts
from ``config.init_from``'s parameters or from scratch. Batches are a pure function of
(seed, step), dropout keys of (seed, step), so a resumed run is bitwise the run that
never stopped.
"""

import os
import time
from typing import Any, Sequence

import jax
import ml_collections
from absl import logging
from tqdm import auto as tqdm

from llm_jax import checkpoint as ckpt_lib
from llm_jax import config as config_lib
from llm_jax import data as data_lib
from llm_jax import perf
from llm_jax import preemption
from llm_jax import workdir as workdir_lib
from llm_jax.train import guard
from llm_jax.train import init_from
from llm_jax.train import metrics as metrics_lib
from llm_jax.train import summary as summary_lib
from llm_jax.train import translation
from llm_jax.train.trainer import Trainer, build_trainer


def _initial_state(trainer: Trainer, ckpts: ckpt_lib.Checkpoints) -> tuple[Any, int, int]:
  """(state, first step, skipped steps): resumed from WORKDIR, started from init_from, or fresh.

  Resuming takes the newest intact checkpoint (see ``Checkpoints.restore_latest``); a
  checkpoint of another model kind or shape is an error here, before anything compiles.
  """
  config = trainer.config
  found = ckpts.restore_latest(trainer.abstract_state, model_kind=config.model.kind,
                               fallback=config.checkpoint.fallback)
  if found is not None:
    state, meta, step = found
    logging.info('Resumed from step %d in %s', step, ckpts.directory)
    print(f'[llm_jax] resumed from step {step} in {ckpts.directory}', flush=True)
    return state, int(meta['data_position']), int(meta.get('skipped_steps', 0))
  state = trainer.init()
  if config.init_from:
    state = state.replace(params=init_from.load(config.init_from, trainer, state.params))
  return state, 0, 0


def _make_workdir(workdir: str) -> None:
  if '://' in workdir:
    raise config_lib.ConfigError(f'--workdir={workdir} is a URL; workdirs are local paths for now: mount the '
                                 f'bucket (gcsfuse, docs/parallelism.md) and give its local path.')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(f'--workdir={workdir} is a file; give a directory '
                                 f'(it will hold checkpoints, metrics and config.json).')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise config_lib.ConfigError(f'cannot create --workdir={workdir} ({e.strerror}); give a directory '
                                 'you can write to.') from None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_changes: Sequence[str] = ()) -> dict:
  """Trains until train.steps (or train.epochs, or train.stop_at), evaluating, logging and checkpointing.

  Holds the workdir's lock for the whole run and refuses a resume that changes the model,
  the data or the batch unless ``allow_changes`` names those keys (``llm_jax.workdir``);
  the workdir's config record changes only once the run has restored its state.
  Returns the final summary (step, last train loss, last eval loss, seconds). Raises an
  ``errors.Error`` with its exit code for everything a user can act on: a bad config
  (2), a NaN/Inf (3, nothing of that step saved), a checkpoint or change that cannot be
  resumed (4), a failed save (5), a busy workdir (8), SIGTERM (75) or Ctrl-C (130) after
  saving at the step in flight.
  """
  config_lib.validate(config, num_devices=jax.device_count())
  workdir_lib.check_allowed(config, allow_changes)
  _make_workdir(workdir)
  with workdir_lib.held(workdir) as lock:
    resuming = bool(ckpt_lib.finalized_steps(workdir))
    changes = workdir_lib.check_resume(workdir, config, allow_changes, resuming=resuming)
    kept = lambda: (ckpt_lib.finalized_steps(workdir) or [None])[-1]
    with preemption.Watch(kept=kept, on_abort=lock.release if lock else lambda: None) as preempt:
      return _train(config, workdir, preempt, changes, allow_changes)


def _train(config, workdir: str, preempt: preemption.Watch, changes: dict, allow_changes) -> dict:
  trainer = build_trainer(config, workdir)
  ckpts = ckpt_lib.Checkpoints(workdir, config.checkpoint)
  start_time = time.time()
  writer = None
  try:
    with trainer.context():
      had_record = workdir_lib.read_config(workdir) is not None
      state, first, skipped = _initial_state(trainer, ckpts)
      event = 'resume' if first else 'restart' if had_record else 'start'
      workdir_lib.record(workdir, config, step=first, event=event, changes=changes, allowed=allow_changes)
      if changes and jax.process_index() == 0:
        print(f'[llm_jax] config changed since the last run in this workdir: '
              f'{workdir_lib.describe_changes(changes)} (recorded in {workdir_lib.HISTORY_FILE})', flush=True)
      last = config.train.stop_at if config.train.stop_at != -1 else trainer.steps
      if jax.process_index() == 0:
        print(summary_lib.startup(trainer, workdir, first, last), flush=True)
      writer = metrics_lib.MetricsWriter(workdir, resume_step=first)
      nonfinite = guard.Watch(config.train.nonfinite, skipped)
      preempt.arm()
      summary = _run(trainer, state, first, last, ckpts, writer, nonfinite, preempt)
      params = summary.pop('_params')
  except BaseException:
    preempt.saving()
    _close_after_error(ckpts, writer)
    raise
  preempt.saving()
  writer.close()
  ckpts.close()  # waits for the last save; raises CheckpointSaveError if it failed
  preempt.disarm()
  summary['seconds'] = round(time.time() - start_time, 1)
  logging.info('Finished: %s', summary)
  losses = ', '.join(f'{k} {summary[k]:.4f}' for k in ('train_loss', 'eval_loss') if k in summary)
  print(f'[llm_jax] done: step {summary["step"]}, {losses}, {summary["seconds"]} s, workdir {workdir}', flush=True)
  if config.sample.prompt and jax.process_index() == 0 and not preempt.interrupted:
    text = samples(trainer, jax.device_get(params), [config.sample.prompt])[0]
    print(f'[llm_jax] sample:\n{text}', flush=True)
  return summary


def samples(trainer: Trainer, params, prompts: Sequence[str]) -> list[str]:
  """The completions of ``prompts`` under config.sample's settings (the best beam with beam search), seed
  config.seed; decoded from a host copy of ``params`` on one device."""
  from llm_jax.generation import text
  outputs = text.complete(trainer.kind, jax.device_get(params), trainer.dataset.tokenizer, prompts,
                          seed=trainer.config.seed, **text.config_settings(trainer.config.sample))
  return [row[0].text for row in outputs]


def _close_after_error(ckpts: ckpt_lib.Checkpoints, writer) -> None:
  """Finishes the save in flight (the newest good checkpoint) without hiding the first error."""
  for close in (ckpts.close, writer.close if writer else None):
    try:
      if close is not None:
        close()
    except Exception as e:  # pylint: disable=broad-except
      logging.error('While stopping after an error: %s', e)
      print(f'[llm_jax] also: {e}', flush=True)


def _run(trainer: Trainer, state, first: int, last: int, ckpts: ckpt_lib.Checkpoints, writer,
         nonfinite: guard.Watch, preempt: preemption.Watch) -> dict:
  """The step loop. Syncs with the device only to log, evaluate and save; checks for
  non-finite metrics right before each of those, so nothing of a bad step gets out."""
  config = trainer.config
  ckpt_cfg = config.checkpoint
  tokens_per_step = config.train.batch_size * config.data.seq_len
  peak, _ = perf.peak_flops(config.model.dtype)
  summary: dict = {'step': first}
  prompts = [p for p in config.sample.eval_prompts.split('|') if p]
  translate = config.eval.bleu_examples > 0
  if (prompts or translate) and jax.process_count() > 1:  # both decode from a host copy of the parameters
    print('[llm_jax] config.sample.eval_prompts and eval.bleu_examples are not decoded in a multi-host run.',
          flush=True)
    prompts, translate = [], False
  timer_step, timer = first, None
  # The bar is closed on every exit (errors too), so messages printed after it start on a line of their own.
  with tqdm.tqdm(total=last, initial=first, desc='train', disable=jax.process_index() != 0,
                 mininterval=2.0, dynamic_ncols=True) as bar, \
       data_lib.prefetch(trainer.device_batch(trainer.dataset.train_batch(s))
                         for s in range(first, last)) as batches:
    for step in range(first + 1, last + 1):
      state, metrics = trainer.train_step(state, next(batches))
      nonfinite.add(step, metrics)
      bar.update(1)
      if timer is None:  # the first step compiles; time from its end
        jax.block_until_ready(metrics)
        timer_step, timer = step, time.perf_counter()
      stop = preempt.reached(step) and step < last
      log = step % config.log_every_steps == 0 or step == last
      every = config.eval.every_steps
      evaluate = bool(config.data.eval_split) and ((every and step % every == 0) or step == last) and not stop
      save = step % ckpt_cfg.every_steps == 0 or step == last or stop
      if log or evaluate or save:
        nonfinite.check(newest_checkpoint=ckpts.latest_step)
      record = {}
      if log:
        record = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if config.train.nonfinite == 'skip':
          record['skipped_steps'] = nonfinite.skipped
        if step > timer_step:
          rate = (step - timer_step) * tokens_per_step / (time.perf_counter() - timer)
          record.update(tokens_per_sec=rate, mfu=rate * trainer.flops_per_token / (peak * jax.device_count()))
          timer_step, timer = step, time.perf_counter()
        bar.set_postfix(loss=f'{record["train_loss"]:.4f}')
      if evaluate:
        record.update(trainer.evaluate(state.params))
        decoded = dict(zip(prompts, samples(trainer, state.params, prompts))) if prompts else {}
        if translate:
          scores, translations = translation.evaluate(trainer, state.params)
          record.update(scores)
          decoded.update(translations)
        shown = ''.join(f', {k} {record[k]:.4f}' for k in ('eval_bleu', 'eval_exact_match') if k in record)
        tqdm.tqdm.write(f'step {step}: eval_loss {record["eval_loss"]:.4f}{shown}')
        if decoded:
          writer.write_samples(step, decoded)
        if timer is not None:
          timer = time.perf_counter()
      if record:
        writer.write(step, record)
        summary.update(record)
      if save:
        ranked = {ckpt_cfg.keep_best_metric: record[ckpt_cfg.keep_best_metric]} if (
            ckpt_cfg.keep_best and ckpt_cfg.keep_best_metric in record) else None
        ckpts.save(step, state, {'data_position': step, 'model_kind': config.model.kind,
                                 'skipped_steps': nonfinite.skipped}, metrics=ranked)
      if stop:
        bar.close()
        preempt.saving()
        ckpts.wait()
        raise preempt.stopped(step, ckpts.directory)
  summary['step'] = last
  summary['_params'] = state.params
  return summary
