"""Train a model from a config file.

  python -m llm_jax.main --config=configs/default.py --workdir=/tmp/run [--config.key=value ...]

Re-running the same command resumes from the newest checkpoint in --workdir.

Several hosts run the same command (a shared --workdir); a Cloud TPU pod slice is
detected by itself, elsewhere add --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I (docs/parallelism.md).

Exit codes: 0 finished; 1 an unexpected error (traceback); 2 a bad config or flag;
3 a NaN/Inf loss, gradient or parameter norm (nothing of that step saved); 4 a
checkpoint that cannot be resumed (corrupt, or of another model); 5 a checkpoint save
failed (the previous one is intact); 75 preempted by SIGTERM after saving (re-run to
resume).
"""

if __name__ == '__main__':
  from llm_jax import hostmem
  hostmem.setup()  # before anything starts threads (see llm_jax/hostmem.py)

import sys  # noqa: E402

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from llm_jax import config as config_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/NAME.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the config; resumes from it.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host outside Cloud TPU: host:port of process 0 '
                    '(with --num_processes and --process_id; a TPU pod slice needs none of the three).')
flags.DEFINE_integer('num_processes', None, 'Multi-host: the number of processes (one per host).')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process, 0 .. num_processes - 1.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  from llm_jax import parallel
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  import jax
  if jax.process_index() != 0 or not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # library INFO logs off; --verbosity=0 shows them
  from llm_jax import checkpoint
  from llm_jax import preemption
  from llm_jax.data import sources
  from llm_jax.train import guard
  from llm_jax.train import loop
  try:
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except config_lib.ConfigError as e:
    print(f'llm_jax: config error: {e}', file=sys.stderr)
    sys.exit(2)
  except (guard.NonFiniteError, checkpoint.CheckpointError, checkpoint.CheckpointSaveError,
          preemption.Preempted, sources.DatasetUnavailableError) as e:
    print(f'llm_jax: {e}', file=sys.stderr, flush=True)
    sys.exit(e.exit_code)


def _parse_flags(argv):
  """absl's parser, with a one-line error for a misspelt or ill-typed --config.key override."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f'llm_jax: {e}\nPass --helpfull to see the flags.', file=sys.stderr)
    sys.exit(1)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    print(f'llm_jax: config error: {_override_problem(argv) or str(e).splitlines()[-1]}', file=sys.stderr)
    sys.exit(2)


def _override_problem(argv) -> str:
  """The first --config.key override naming a key the config file does not have."""
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if path is None:
    return ''
  config = config_lib.from_file(path)
  known = set(config_lib.flat_keys(config))
  for arg in argv:
    if arg.startswith('--config.'):
      key = arg[len('--config.'):].split('=', 1)[0]
      if key not in known:
        return config_lib.unknown_key_message(config, key)
  return ''


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
