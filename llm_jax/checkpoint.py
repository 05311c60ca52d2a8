"""Orbax checkpoints of a run: atomic async save, verified restore, keep policy, inference loading.

Layout of a workdir::

  WORKDIR/config.json              the run's config (written at start)
  WORKDIR/data/                    tokenizer and token cache
  WORKDIR/checkpoints/<step>/      params | train (step, opt_state, rng) | meta (JSON) | llm_jax_files.json
  WORKDIR/corrupt_checkpoints/     steps set aside by ``checkpoint.fallback``

Parameters are their own item so inference and ``init_from`` restore them without the
optimizer. ``meta`` holds the data position (the next batch index; the pipeline is a
pure function of it), the model kind (checked on restore) and the count of skipped
non-finite steps.

Atomicity is Orbax's own: a save writes ``<step>.orbax-checkpoint-tmp-*``, puts
``commit_success.txt`` in it and renames it to ``<step>`` only once every item is on
disk. A process killed mid-save leaves only the temporary directory, which
``latest_step`` never lists and the next start deletes. Just before the commit,
``llm_jax_files.json`` records the size of every file of the step, so a restore can
name a truncated or missing file (and the step) before TensorStore reads a byte,
instead of failing deep inside it or restoring something short.

Saves run in Orbax's background thread: ``save`` returns once the arrays are copied
to the host. It blocks only while the previous save is still being written, and an
error of a background save surfaces as ``CheckpointSaveError`` at the next ``save``
or at ``wait`` (the end of the run).
"""

import contextlib
import json
import logging as py_logging
import os
import re
import shutil
import time
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from llm_jax import errors

ITEMS = ('params', 'train', 'meta')
COMMIT_FILE = 'commit_success.txt'      # Orbax's commit marker, present in every finalized step
FILES = 'llm_jax_files.json'            # {path relative to the step: size in bytes, -1: must exist}
_CHANGES_AT_COMMIT = ('_CHECKPOINT_METADATA',)  # Orbax rewrites it during the commit
# What a step without FILES (an older llm_jax) must at least hold.
_REQUIRED = ('_CHECKPOINT_METADATA', 'params/_METADATA', 'params/manifest.ocdbt',
             'train/_METADATA', 'train/manifest.ocdbt', 'meta/metadata')
_TMP_MARK = '.orbax-checkpoint-tmp'


class CheckpointError(errors.Error):
  """A checkpoint that cannot be restored into this run (corrupt, or another model)."""
  exit_code = errors.CHECKPOINT


class CorruptCheckpointError(CheckpointError):
  """A step whose files are missing or truncated; ``step`` and ``path`` name them."""

  def __init__(self, step: int, path: str, problem: str, hint: str = ''):
    self.step, self.path, self.problem = step, path, problem
    super().__init__(f'checkpoint step {step} is corrupt: {path} {problem}' + (f'; {hint}' if hint else ''))

  def with_hint(self, hint: str) -> 'CorruptCheckpointError':
    return CorruptCheckpointError(self.step, self.path, self.problem, hint)


class CheckpointMismatchError(CheckpointError):
  """A checkpoint of another model: other kind, parameter paths or shapes."""


class CheckpointSaveError(errors.Error):
  """A save that failed (full or read-only disk); the previous checkpoint is intact."""
  exit_code = errors.SAVE_FAILED


def keep_policy(ckpt_cfg: ml_collections.ConfigDict):
  """The newest ``max_to_keep`` steps, plus the ``keep_best`` best by ``keep_best_metric``.

  Orbax deletes a step only when no policy keeps it, and the newest step is always
  among the newest ``max_to_keep`` (validated >= 1), so a run can always resume.
  """
  newest = ocp.checkpoint_managers.LatestN(n=ckpt_cfg.max_to_keep)
  if not ckpt_cfg.keep_best:
    return newest
  metric = ckpt_cfg.keep_best_metric
  best = ocp.checkpoint_managers.BestN(
      get_metric_fn=lambda metrics: float(metrics[metric]), reverse=ckpt_cfg.keep_best_mode == 'min',
      n=ckpt_cfg.keep_best, keep_checkpoints_without_metrics=False)
  return ocp.checkpoint_managers.AnyPreservationPolicy([newest, best])


def _handlers():
  return dict(params=ocp.StandardCheckpointHandler(), train=ocp.StandardCheckpointHandler(),
              meta=ocp.JsonCheckpointHandler())


class _DropReadOnlyNotice(py_logging.Filter):
  """Drops Orbax's 'Given directory is read only' warning: read-only is what was asked for."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Given directory is read only')


@contextlib.contextmanager
def _without_read_only_notice():
  """While a read-only CheckpointManager is built (sampling, init_from), its notice is not logged."""
  drop = _DropReadOnlyNotice()
  logger = py_logging.getLogger('absl')
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


class Checkpoints:
  """The owner of one ``ocp.CheckpointManager`` for WORKDIR/checkpoints.

  ``read_only=True`` (inference, ``init_from``) neither creates, deletes nor cleans
  anything, so it is safe on the workdir of a run that is still training.
  """

  def __init__(self, workdir: str, ckpt_cfg: ml_collections.ConfigDict, *, read_only: bool = False):
    workdir = os.path.abspath(workdir)
    self.directory = os.path.join(workdir, 'checkpoints')
    self.set_aside_directory = os.path.join(workdir, 'corrupt_checkpoints')
    self.read_only = read_only
    self._pending: Optional[int] = None  # the step whose save may still be running
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    else:
      self.async_save = ckpt_cfg.async_save
      # Always Orbax's async checkpointer (the files listing hooks into its finalize);
      # async_save=False waits for each save instead.
      ranked = bool(ckpt_cfg.keep_best)  # best_fn makes Orbax store the metrics BestN ranks by
      options = ocp.CheckpointManagerOptions(
          preservation_policy=keep_policy(ckpt_cfg),
          best_fn=(lambda metrics: float(metrics[ckpt_cfg.keep_best_metric])) if ranked else None,
          best_mode=ckpt_cfg.keep_best_mode,
          enable_async_checkpointing=True,
          async_options=ocp.AsyncOptions(post_finalization_callback=self._record_files),
          cleanup_tmp_directories=True,
          create=True)
    with _without_read_only_notice() if read_only else contextlib.nullcontext():
      self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())
    if not read_only:  # Orbax deletes unfinished saves in the background until the first save; finish now
      getattr(self.manager, '_maybe_await_cleanup_tmp_directory', lambda: None)()

  # ---- steps ------------------------------------------------------------------------------

  def latest_step(self) -> Optional[int]:
    """The newest finalized step (temporary directories of unfinished saves never count)."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def finalized_steps_on_disk(self) -> list[int]:
    """Steps whose directory holds the commit marker, read from the disk (not Orbax's cache)."""
    return finalized_steps(os.path.dirname(self.directory))

  # ---- save -------------------------------------------------------------------------------

  def save(self, step: int, state, meta: dict, metrics: Optional[dict] = None) -> None:
    """Starts saving ``state`` after ``step`` updates; returns once it is copied to the host.

    ``metrics`` (e.g. eval_loss) rank the step for ``checkpoint.keep_best``. Raises
    CheckpointSaveError if the previous save failed or this one cannot start.
    """
    self._wait()
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        train=ocp.args.StandardSave(dict(step=state.step, opt_state=state.opt_state, rng=state.rng)),
        meta=ocp.args.JsonSave(meta))
    self._pending = step
    try:
      self.manager.save(step, args=args, metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if not self.async_save:
      self._wait()

  def wait(self) -> None:
    """Blocks until the save in flight is finalized; raises CheckpointSaveError if it failed."""
    self._wait()

  def close(self) -> None:
    try:
      self._wait()
    finally:
      self.manager.close()

  def _wait(self) -> None:
    if self.read_only:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      step, self._pending = self._pending, None
      raise self._save_error(step, e) from e
    self._pending = None

  def _save_error(self, step: Optional[int], e: Exception) -> CheckpointSaveError:
    good = [s for s in self.finalized_steps_on_disk() if s != step]
    kept = (f'the newest intact checkpoint is step {good[-1]}' if good
            else 'there is no earlier checkpoint')
    reason = (str(e).strip().splitlines() or [''])[0][:1000]
    return CheckpointSaveError(
        f'saving checkpoint step {step} to {self.directory} failed ({type(e).__name__}: {reason}); '
        f'{kept}. Free space or fix the permissions there, then re-run the same command to resume.')

  def _record_files(self) -> None:
    """Orbax's post-finalization hook: runs in its save thread after every item is written
    and before the commit, and lists every file of the step with its size."""
    if jax.process_index() != 0 or self._pending is None:
      return
    step = self._pending
    candidates = [os.path.join(self.directory, n) for n in os.listdir(self.directory)
                  if n.startswith(f'{step}{_TMP_MARK}')]
    if not candidates:  # commit-file atomicity (e.g. GCS) writes the final directory in place
      candidates = [os.path.join(self.directory, str(step))]
    path = max(candidates, key=os.path.getmtime)
    sizes = {}
    for root, _, files in os.walk(path):
      for name in files:
        rel = os.path.relpath(os.path.join(root, name), path)
        sizes[rel] = -1 if rel in _CHANGES_AT_COMMIT or rel == COMMIT_FILE else os.path.getsize(
            os.path.join(root, name))
    part = os.path.join(path, FILES + '.part')
    with open(part, 'w') as f:
      json.dump(sizes, f, indent=0, sort_keys=True)
    os.replace(part, os.path.join(path, FILES))

  # ---- restore ----------------------------------------------------------------------------

  def verify(self, step: int) -> None:
    """Raises CorruptCheckpointError naming the first missing or truncated file of ``step``."""
    path = os.path.join(self.directory, str(step))
    if not os.path.isdir(path):
      raise CorruptCheckpointError(step, path, 'does not exist')
    commit = os.path.join(path, COMMIT_FILE)
    if not os.path.exists(commit):
      raise CorruptCheckpointError(step, commit, 'is missing: the save of this step was never committed')
    listing = os.path.join(path, FILES)
    if os.path.exists(listing):
      try:
        with open(listing) as f:
          sizes = json.load(f)
      except ValueError:
        raise CorruptCheckpointError(step, listing, 'is not valid JSON') from None
    else:
      logging.warning('%s has no %s (saved by an older llm_jax): file sizes are not checked.', path, FILES)
      sizes = {rel: -1 for rel in _REQUIRED}
    for rel, size in sorted(sizes.items()):
      file = os.path.join(path, rel)
      if not os.path.exists(file):
        raise CorruptCheckpointError(step, file, 'is missing')
      actual = os.path.getsize(file)
      if size >= 0 and actual != size:
        what = 'truncated' if actual < size else 'changed'
        raise CorruptCheckpointError(step, file, f'is {what}: {actual} bytes, {size} were written')

  def read_meta(self, step: int) -> dict:
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise self._restore_error(step, e) from e
    return dict(out['meta'])

  def restore(self, step: int, abstract_state, model_kind: Optional[str] = None) -> tuple[Any, dict]:
    """Restores the full train state onto the shardings carried by ``abstract_state``.

    Verifies the files first and compares the model kind, the parameter and optimizer
    paths, shapes and dtypes with ``abstract_state``: a mismatch is a
    CheckpointMismatchError listing them, never a traceback from inside Orbax.
    """
    a = abstract_state
    self.verify(step)
    meta = self.read_meta(step)
    if model_kind is not None and meta.get('model_kind', model_kind) != model_kind:
      raise CheckpointMismatchError(
          f'checkpoint step {step} in {self.directory} is of model.kind={meta["model_kind"]!r}, the config '
          f'says {model_kind!r}; use a fresh --workdir or --config.model.kind={meta["model_kind"]}.')
    train = dict(step=a.step, opt_state=a.opt_state, rng=a.rng)
    self.check_matches(step, params=a.params, train=train)
    args = ocp.args.Composite(params=ocp.args.StandardRestore(a.params),
                              train=ocp.args.StandardRestore(train))
    try:
      out = self.manager.restore(step, args=args)
    except Exception as e:  # pylint: disable=broad-except
      raise self._restore_error(step, e) from e
    train = out['train']
    state = a.replace(step=train['step'], params=out['params'], opt_state=train['opt_state'], rng=train['rng'])
    return state, meta

  def restore_params(self, step: int, abstract_params) -> Any:
    self.verify(step)
    self.check_matches(step, params=abstract_params)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params)))['params']
    except Exception as e:  # pylint: disable=broad-except
      raise self._restore_error(step, e) from e

  def restore_matching(self, step: int, abstract_params, fresh) -> tuple[Any, dict]:
    """The parameters of ``abstract_params``' tree: those this checkpoint holds at the same
    path restored onto their shardings, the others taken from ``fresh`` (a new head).

    Returns (params, {'restored': [...], 'fresh': [...], 'unused': [...]}), path lists for
    the log. A path both hold with different shapes is a CheckpointMismatchError listing
    every such path (a new head starts fresh; a changed body is not silently replaced).
    """
    self.verify(step)
    try:
      saved_tree = self.manager.item_metadata(step)['params']
    except Exception as e:  # pylint: disable=broad-except
      raise self._restore_error(step, e) from e
    saved, want = _shapes(saved_tree), _shapes(abstract_params)
    clash = sorted(k for k in saved.keys() & want.keys() if saved[k] != want[k])
    if clash:
      raise CheckpointMismatchError(
          f'checkpoint step {step} in {self.directory} has parameters of other shapes than the model '
          f'({len(clash)} paths): ' + '; '.join(f'{k}: checkpoint {saved[k]}, model {want[k]}' for k in clash[:10])
          + ('; ...' if len(clash) > 10 else '') + '. Use a config with the shapes it was trained with.')
    placed = {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
    default = next(iter(placed.values())).sharding if placed else None
    if default is not None and hasattr(default, 'mesh'):
      default = jax.sharding.NamedSharding(default.mesh, jax.sharding.PartitionSpec())

    def target(path, meta):
      key = _key(path)
      sharding = placed[key].sharding if key in placed else default
      return jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=sharding)

    target_tree = jax.tree_util.tree_map_with_path(target, saved_tree)
    try:
      loaded = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target_tree)))
    except Exception as e:  # pylint: disable=broad-except
      raise self._restore_error(step, e) from e
    loaded = {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(loaded['params'])[0]}
    params = jax.tree_util.tree_map_with_path(lambda path, f: loaded.get(_key(path), f), fresh)
    report = dict(restored=sorted(want.keys() & saved.keys()), fresh=sorted(want.keys() - saved.keys()),
                  unused=sorted(saved.keys() - want.keys()))
    return params, report

  def restore_latest(self, abstract_state, *, model_kind: str, fallback: bool):
    """(state, meta, step) of the newest intact step, or None when there is none.

    A corrupt newest step raises CorruptCheckpointError, or with ``fallback`` is moved
    to WORKDIR/corrupt_checkpoints/ (with a message saying so) and the next older step
    is tried.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      older = steps[i + 1] if i + 1 < len(steps) else None
      try:
        state, meta = self.restore(step, abstract_state, model_kind)
        return state, meta, step
      except CorruptCheckpointError as e:
        if not fallback:
          hint = (f'set --config.checkpoint.fallback=True to set it aside and resume from step {older}'
                  if older is not None else f'no older checkpoint exists; delete {self.directory} to start afresh')
          raise e.with_hint(hint) from None
        moved = self.set_aside(step)
        then = f'falling back to step {older}' if older is not None else 'no older checkpoint is left'
        message = f'{e}; moved it to {moved}, {then}.'
        logging.warning(message)
        print(f'[llm_jax] {message}', flush=True)
    if steps:
      raise CorruptCheckpointError(
          steps[-1], self.directory, 'and every older step are corrupt',
          f'all were moved to {self.set_aside_directory}; re-run to start from scratch')
    return None

  def set_aside(self, step: int) -> str:
    """Moves step ``step`` out of Orbax's sight (kept for a post-mortem); returns where."""
    target = os.path.join(self.set_aside_directory, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    if jax.process_index() == 0:
      os.makedirs(self.set_aside_directory, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'llm_jax set aside step {step}')
    self.manager.reload()
    return target

  def check_matches(self, step: int, **expected) -> None:
    """Raises CheckpointMismatchError listing paths missing, unexpected or of another shape."""
    try:
      saved = self.manager.item_metadata(step)
    except Exception as e:  # pylint: disable=broad-except
      raise self._restore_error(step, e) from e
    problems = []
    for item, abstract in expected.items():
      have = _shapes(saved[item])
      want = _shapes(abstract)
      for key in sorted(want.keys() - have.keys()):
        problems.append(f'{item}/{key}: model {want[key]}, not in the checkpoint')
      for key in sorted(have.keys() - want.keys()):
        problems.append(f'{item}/{key}: checkpoint {have[key]}, not in the model')
      for key in sorted(want.keys() & have.keys()):
        if want[key] != have[key]:
          problems.append(f'{item}/{key}: checkpoint {have[key]}, model {want[key]}')
    if problems:
      shown = problems[:20] + ([f'... and {len(problems) - 20} more'] if len(problems) > 20 else [])
      raise CheckpointMismatchError(
          f'checkpoint step {step} in {self.directory} does not match the config '
          f'({len(problems)} mismatched paths):\n  ' + '\n  '.join(shown) +
          '\nRestore with the config it was trained with, or use a fresh --workdir.')

  def _restore_error(self, step: int, e: Exception) -> CheckpointError:
    """An Orbax/TensorStore failure as a CorruptCheckpointError naming the step and a file."""
    text = str(e)
    cause = e.__cause__ or e.__context__
    if cause is not None:
      text += ' ' + str(cause)
    step_dir = os.path.join(self.directory, str(step))
    paths = [p.rstrip('/') for p in re.findall(r'(/[^\s"\'\]\[,]+)', text) if p.startswith(step_dir)]
    path = max(paths, key=len) if paths else step_dir
    reason = (text.strip().splitlines() or [''])[0][:400]
    return CorruptCheckpointError(step, path, f'could not be read ({type(e).__name__}: {reason})')


def _key(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k)))) for k in path)


def _shapes(tree) -> dict:
  """{'a/b/0': 'float32(4, 8)'} of a tree of arrays, ShapeDtypeStructs or Orbax metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {}
  for path, leaf in leaves:
    out[_key(path)] = f'{jax.numpy.dtype(leaf.dtype).name}{tuple(leaf.shape)}'
  return out


def finalized_steps(workdir: str) -> list[int]:
  """The committed checkpoint steps of ``workdir``, read from the disk without opening Orbax."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.exists(os.path.join(directory, n, COMMIT_FILE)))


def load_for_inference(workdir: str, step: Optional[int] = None):
  """(config, model kind, params, tokenizer) of a trained run, on the default device."""
  from llm_jax import data as data_lib
  from llm_jax import workdir as workdir_lib
  from llm_jax.train import trainer

  config = workdir_lib.load_config(workdir)
  tokenizer = data_lib.load_tokenizer(data_lib.cache_dir(config, workdir))
  kind = trainer.make_kind(config, tokenizer.vocab_size)
  ckpts = Checkpoints(workdir, config.checkpoint, read_only=True)
  try:
    step = ckpts.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no finished checkpoint in {ckpts.directory} yet; train until the first save '
                            f'(checkpoint.every_steps={config.checkpoint.every_steps}) or wait for it.')
    params = ckpts.restore_params(step, placed(kind.abstract_params()))
  finally:
    ckpts.close()
  return config, kind, params, tokenizer


def placed(abstract_params, sharding=None):
  """``abstract_params`` (ShapeDtypeStructs) placed on ``sharding`` (default: the default device)."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract_params)
