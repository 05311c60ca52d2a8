"""What every command-line entry point shares: a quiet start, flags and errors as one line.

``run(main)`` replaces ``absl.app.run(main)``:

- unless ``--verbosity`` (``-v``) is given, library INFO logs and TensorFlow's C++
  start-up lines are off, so a user sees llm_jax's own lines and real warnings;
- a flag that is unknown, misspelt or of the wrong type, a ``--config`` file that does
  not exist or does not define ``get_config``, and a ``--config.key`` that the config
  does not have, each end with one line and exit code 2 (``errors.USAGE``);
- an ``errors.Error`` raised by ``main`` ends with its one line and its exit code,
  Ctrl-C outside training with exit code 130; anything else is a bug and keeps its
  traceback (exit code 1).
"""

import os
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from llm_jax import errors

FLAGS = flags.FLAGS


def verbose(argv) -> bool:
  """Whether the command line asks for library logs (``--verbosity=N`` or ``-v N``)."""
  return any(a == '-v' or a.startswith(('--verbosity', '-v=')) for a in argv[1:])


def quiet_start(argv) -> None:
  """Turns start-up noise off before jax or TensorFlow is imported (unless ``verbose``)."""
  if verbose(argv):
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow's C++ lines (TFDS datasets import it)
  logging.set_verbosity(logging.WARNING)


def _config_path(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def check_config_file(path: str) -> None:
  """ConfigError unless ``path`` is a Python file that defines ``get_config``."""
  if not os.path.isfile(path):
    where = 'is a directory' if os.path.isdir(path) else 'does not exist'
    raise errors.ConfigError(f'--config={path} {where}; give a config file, e.g. --config=configs/default.py.')
  try:
    with open(path, encoding='utf-8') as f:
      source = f.read()
    compile(source, path, 'exec')
  except SyntaxError as e:
    raise errors.ConfigError(f'--config={path} has a syntax error at line {e.lineno}: {e.msg}.') from None
  except (OSError, UnicodeDecodeError) as e:
    raise errors.ConfigError(f'--config={path} cannot be read ({e}).') from None
  if 'def get_config' not in source:
    raise errors.ConfigError(f'--config={path} defines no get_config(); a config file returns its '
                             f'ml_collections.ConfigDict from get_config().')


def parse_flags(argv) -> list:
  """absl's parser, with every mistake on the command line as one line and exit code 2."""
  try:
    path = _config_path(argv)
    if path is not None:
      check_config_file(path)
    try:
      return FLAGS(argv)
    except flags.Error as e:
      problem = _flag_problem(argv) or _required_problem(e) or str(e).rstrip('.')
      raise errors.ConfigError(f'{problem}. Pass --helpfull to see the flags.') from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      # ml_collections' override of a locked config: a key that does not exist, a value of another type
      raise errors.ConfigError(_flag_problem(argv) or str(e).splitlines()[-1]) from None
  except errors.ConfigError as e:
    sys.exit(errors.report(e))


def _required_problem(error: Exception) -> str:
  """'--workdir is required (its help)' for absl's message about a required flag left out."""
  text = str(error)
  if 'must have a value other than None' not in text:
    return ''
  name = text.split('--', 1)[-1].split('=', 1)[0]
  help_text = FLAGS[name].help.rstrip('.') if name in FLAGS else ''
  return f'--{name} is required' + (f' ({help_text})' if help_text else '')


def _flag_problem(argv) -> str:
  """The first --config.key override naming a key the config file does not have ('' if none)."""
  from llm_jax import config as config_lib  # imports jax: only once something is wrong
  path = _config_path(argv)
  if path is None:
    return ''
  try:
    config = config_lib.from_file(path)
  except Exception:  # pylint: disable=broad-except
    return ''
  known = set(config_lib.flat_keys(config))
  for arg in argv:
    if arg.startswith('--config.'):
      key = arg[len('--config.'):].split('=', 1)[0]
      if key not in known and not any(k.startswith(key + '.') for k in known):
        return config_lib.unknown_key_message(config, key)
  return ''


def no_positional(argv) -> None:
  """ConfigError for words on the command line that are not flags (a flag's value needs '=')."""
  if len(argv) > 1:
    raise errors.ConfigError(f'unexpected arguments {" ".join(argv[1:])!r}; every setting is a flag, '
                             f'--name=value (e.g. --config.train.steps=100).')


def run(main: Callable[[list], None]) -> None:
  """``app.run(main)`` with a quiet start, one-line flag errors and errors as exit codes."""
  quiet_start(sys.argv)

  def guarded(argv):
    try:
      main(argv)
    except (errors.Error, KeyboardInterrupt) as e:
      sys.exit(errors.report(e))

  try:
    app.run(guarded, flags_parser=parse_flags)
  except KeyboardInterrupt as e:  # while flags parse or modules import, before main
    sys.exit(errors.report(e))
