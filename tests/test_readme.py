"""Every command the README (and the docs, the configs' and entry points' docstrings) shows
is checked against the product, so none can rot:

- each ``--flag`` a command passes exists in that entry point, each ``--config.key`` in
  the config it names, each ``pip install -e '.[extra]'`` extra in pyproject.toml, each
  ``python experiments/...`` script on disk;
- each concrete ``python -m llm_jax.main`` / ``llm_jax.bench`` command builds its config
  with its overrides and passes ``config.validate`` on the devices it asks for
  (``--xla_force_host_platform_device_count``);
- each concrete ``python -m llm_jax.sample`` command runs, against a workdir trained
  one step with ``configs/default.py`` (the model the README samples from).

A placeholder (``NAME``, ``DIR``, ``...``, ``[...]``, ``$VAR``) makes a command generic:
its flags are checked, it is not built or run.
"""

import math
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from llm_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = (['README.md'] + sorted(str(p.relative_to(REPO)) for p in (REPO / 'docs').glob('*.md'))
           + sorted(str(p.relative_to(REPO)) for p in (REPO / 'configs').glob('*.py'))
           + ['llm_jax/main.py', 'llm_jax/sample.py', 'llm_jax/bench/__init__.py', 'llm_jax/convert/__main__.py'])
_PLACEHOLDER = re.compile(r'NAME|DIR\b|DIR_|\.\.\.|\[|\$|BUCKET|HOST0|PORT|=N\b|=I\b|=R\b|KEY')
_ABSL = {'verbosity', 'v', 'helpfull', 'help', 'helpshort', 'logtostderr', 'alsologtostderr'}


def _commands(text: str) -> list[str]:
  """Shell commands in ``text``: lines of code blocks (continuations joined), inline code
  spans and docstring lines that start with python or pip; chains split at '&&'."""
  text = text.replace('\\\\\n', ' ').replace('\\\n', ' ')
  spans = re.findall(r'`([^`\n]+)`', text)
  # whole lines (code blocks, docstrings); a line with backticks is prose, whose spans are taken above
  candidates = spans + [line for line in text.splitlines() if '`' not in line]
  out = []
  for candidate in candidates:
    for part in candidate.split('&&'):
      part = part.strip().strip('`').strip()
      part = re.sub(r'\s+#.*$', '', part)  # a trailing comment
      if re.match(r'^(XLA_FLAGS=\S+ )?(python3? (-m llm_jax\.|experiments/)|pip install )', part):
        out.append(part)
  return out


def _all_commands() -> list[tuple[str, str]]:
  seen, found = set(), []
  for source in SOURCES:
    for command in _commands((REPO / source).read_text()):
      if command not in seen:
        seen.add(command)
        found.append((source, command))
  return found


def _defined_flags(module_path: str) -> set[str]:
  text = (REPO / module_path).read_text()
  return set(re.findall(r"DEFINE_\w+\(\s*'(\w+)'", text)) | _ABSL


COMMANDS = _all_commands()


def test_the_readme_shows_the_commands_this_test_checks():
  readme = [c for s, c in COMMANDS if s == 'README.md']
  assert any(c.startswith('pip install -e .') for c in readme)
  assert sum('llm_jax.main' in c for c in readme) >= 5 and sum('llm_jax.sample' in c for c in readme) >= 2


def _split(command: str):
  try:
    tokens = shlex.split(command)
  except ValueError:  # a line of a longer quoted command (e.g. one a remote shell runs): words only
    tokens = command.replace("'", ' ').replace('"', ' ').split()
  env = {}
  while tokens and re.match(r'^[A-Z_]+=', tokens[0]):
    key, value = tokens.pop(0).split('=', 1)
    env[key] = value
  return env, tokens


def _devices(env: dict, overrides: dict) -> int:
  """The devices a command is for: XLA_FLAGS' simulated count, else the mesh it sets (8 where
  an axis takes the devices left over, as the README's sharding section assumes), else 1."""
  match = re.search(r'device_count=(\d+)', env.get('XLA_FLAGS', ''))
  if match:
    return int(match.group(1))
  sizes = [int(overrides[f'mesh.{a}']) for a in ('data', 'fsdp', 'tensor') if f'mesh.{a}' in overrides]
  if not sizes:
    return 1
  return 8 if -1 in sizes else max(1, math.prod(sizes))


def _platform(command: str) -> str:
  """The platform a command is written for: cudnn needs a GPU, splash a TPU; else this CPU."""
  return 'gpu' if 'cudnn' in command else 'tpu' if 'splash' in command else 'cpu'


def _validate(built, command: str, devices: int, monkeypatch) -> None:
  """config.validate for the command's devices and platform. The memory check is left to the
  machine a command runs on (a pod's command does not fit this CPU, and need not)."""
  import jax
  from llm_jax import parallel
  monkeypatch.setattr(parallel, 'device_memory_bytes', lambda: None)
  platform = _platform(command)
  if platform != 'cpu':
    monkeypatch.setattr(jax, 'default_backend', lambda: platform)
  config_lib.validate(built, num_devices=devices)


@pytest.mark.parametrize('source, command', COMMANDS, ids=[f'{s}: {c[:70]}' for s, c in COMMANDS])
def test_command_matches_the_product(source, command, sample_workdir, monkeypatch):
  env, tokens = _split(command)
  generic = bool(_PLACEHOLDER.search(command))
  if tokens[0] == 'pip':
    tomllib = pytest.importorskip('tomllib')  # Python 3.11+
    pyproject = tomllib.loads((REPO / 'pyproject.toml').read_text())
    extras = set(pyproject['project']['optional-dependencies'])
    for extra in re.findall(r"\.\[(\w+)\]", command):
      assert extra in extras, f'{source}: pip extra [{extra}] is not in pyproject.toml'
    return
  if tokens[1].startswith('experiments/'):
    assert (REPO / tokens[1]).is_file(), f'{source}: {tokens[1]} does not exist'
    return
  module = tokens[2]
  if module in ('llm_jax.experiments', 'llm_jax.hostmem'):  # argparse entry points: parsed by their parser
    import importlib
    parser = importlib.import_module(f'{module}.__main__' if module == 'llm_jax.experiments' else module)._parser()
    try:
      parsed = parser.parse_args(tokens[3:])
    except SystemExit:
      pytest.fail(f'{source}: {command}\n  does not parse as {module}\'s command line')
    if module == 'llm_jax.experiments' and not generic:
      assert (REPO / parsed.study / 'study.py').is_file(), f'{source}: {command}\n  {parsed.study} is not a study'
    return
  assert module in ('llm_jax.main', 'llm_jax.sample', 'llm_jax.bench', 'llm_jax.convert'), \
      f'{source}: unknown entry point {module}'
  args = [t for t in tokens[3:] if t.startswith('--')]
  path = module.replace('.', '/')
  known = _defined_flags(f'{path}/__main__.py' if (REPO / path).is_dir() else f'{path}.py')
  config_path = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), 'configs/default.py')
  config_file = config_path if not _PLACEHOLDER.search(config_path) else 'configs/default.py'
  config = config_lib.from_file(str(REPO / config_file))
  keys = set(config_lib.flat_keys(config))
  overrides = {}
  for arg in args:
    name, _, value = arg[2:].partition('=')
    if name.startswith('config.'):
      key = name[len('config.'):]
      assert key in keys or generic, f'{source}: {command}\n  --{name}: {config_lib.unknown_key_message(config, key)}'
      overrides[key] = value
    else:
      assert name in known, f'{source}: {command}\n  --{name} is not a flag of {module} ({sorted(known - _ABSL)})'
  if generic:
    return
  if module in ('llm_jax.main', 'llm_jax.bench') and '--sweep' not in command:
    built = config_lib.from_file(str(REPO / config_path))
    for key, value in overrides.items():  # as --config.key=value parses them: by the key's type
      current = built
      for part in key.split('.')[:-1]:
        current = current[part]
      leaf = key.split('.')[-1]
      kind = type(current[leaf])
      current[leaf] = (value.lower() in ('1', 'true')) if kind is bool else kind(value)
    _validate(built, command, _devices(env, overrides), monkeypatch)
  if module == 'llm_jax.sample':
    argv = [a if not a.startswith('--workdir=') else f'--workdir={sample_workdir}' for a in tokens[3:]]
    done = subprocess.run([sys.executable, '-m', 'llm_jax.sample', *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, f'{source}: {command}\n{done.stderr[-2000:]}'
    assert done.stdout.startswith('--- sample 1/')


@pytest.fixture(scope='module')
def sample_workdir(tmp_path_factory):
  """A workdir of configs/default.py's model, trained one step (what the sample commands read)."""
  workdir = tmp_path_factory.mktemp('readme') / 'default'
  # Trained with TensorFlow hidden: the default path needs none (tests/test_cli.py checks the rest).
  from tests.test_cli import _NO_TENSORFLOW
  done = subprocess.run([sys.executable, '-c', _NO_TENSORFLOW, '--config=configs/default.py', f'--workdir={workdir}',
                         '--config.train.steps=1', '--config.eval.max_batches=1', '--config.sample.prompt='],
                        capture_output=True, text=True, cwd=REPO, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir
