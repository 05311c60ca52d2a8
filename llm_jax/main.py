"""Train a model from a config file.

  python -m llm_jax.main --config=configs/default.py --workdir=/tmp/run [--config.key=value ...]

Re-running the same command resumes from the newest checkpoint in --workdir.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from llm_jax import config as config_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/NAME.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the config; resumes from it.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.INFO)
  from llm_jax.train import loop
  try:
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except config_lib.ConfigError as e:
    print(f'llm_jax: config error: {e}', file=sys.stderr)
    sys.exit(2)


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
