r"""Times the README's two commands as a new user meets them: a fresh clone, a fresh virtualenv.

  python experiments/readme_commands/run.py --commit=HEAD --repeats=3 --what=main --out=runs/readme_main.json
  python experiments/readme_commands/run.py --commit=HEAD --repeats=3 --what=install   # pip install -e . alone
  python experiments/readme_commands/run.py --commit=HEAD --repeats=1 --what=tests

Each repeat clones COMMIT of this repository into a new temporary directory, makes a new
virtualenv there, and runs, from the clone's root:

- ``install``: ``pip install -e .`` alone; records its seconds and the virtualenv's size;
- ``main``: the README's first command (its first fenced command), split at the first
  ``&&`` so the install and the rest are timed apart; records the final eval loss;
- ``tests``: the README's test command (``pip install -e '.[test]' && pytest``).

pip's download cache is the user's (warm after the first install, as on a machine that
has installed Python packages before); the clone's ``~/.cache/llm_jax`` kernel cache is
emptied per repeat (``LLM_JAX_CACHE``), so the fused CPU kernel compiles as on a new
machine. The last line printed is the JSON written to ``--out``.
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]


def _readme_commands(readme: str) -> list[str]:
  return re.findall(r'```bash\n(.+?)\n```', readme, re.S)


def _du(path: pathlib.Path) -> int:
  return sum(f.stat().st_size for f in path.rglob('*') if f.is_file() and not f.is_symlink())


def _timed(command: str, cwd: pathlib.Path, env: dict, log) -> tuple[float, int, str]:
  start = time.perf_counter()
  proc = subprocess.run(['bash', '-c', command], cwd=cwd, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  log.write(f'$ {command}\n{proc.stdout[-20000:]}\n{proc.stderr[-20000:]}\n')
  return seconds, proc.returncode, proc.stdout + proc.stderr


def one(commit: str, what: str, python: str, keep_logs: pathlib.Path) -> dict:
  with tempfile.TemporaryDirectory(prefix='llm_jax_readme_') as tmp:
    tmp = pathlib.Path(tmp)
    clone = tmp / 'llm_jax'
    subprocess.run(['git', 'clone', '-q', str(REPO), str(clone)], check=True)
    subprocess.run(['git', 'checkout', '-q', commit], cwd=clone, check=True)
    venv = tmp / 'venv'
    subprocess.run([python, '-m', 'venv', str(venv)], check=True)
    env = dict(os.environ, PATH=f'{venv / "bin"}:{os.environ["PATH"]}', VIRTUAL_ENV=str(venv),
               LLM_JAX_CACHE=str(tmp / 'kernel_cache'))
    env.pop('PYTHONPATH', None)
    commands = _readme_commands((clone / 'README.md').read_text())
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=clone, capture_output=True,
                          text=True).stdout.strip()
    result = dict(commit=head, what=what)
    with open(keep_logs, 'a') as log:
      if what == 'install':
        seconds, rc, _ = _timed('pip install -q -e .', clone, env, log)
        result.update(seconds=round(seconds, 1), returncode=rc, venv_bytes=_du(venv))
      elif what == 'main':
        install, rest = commands[0].split('&&', 1)
        seconds_install, rc, _ = _timed(install.strip(), clone, env, log)
        result.update(install_s=round(seconds_install, 1), venv_bytes=_du(venv), returncode=rc)
        if rc == 0:
          seconds_rest, rc, out = _timed(rest.strip(), clone, env, log)
          losses = re.findall(r'eval_loss[ =:]+([0-9.]+)', out)
          result.update(rest_s=round(seconds_rest, 1), seconds=round(seconds_install + seconds_rest, 1),
                        returncode=rc, eval_loss=float(losses[-1]) if losses else None)
      else:
        test_command = next(c for c in commands if 'pytest' in c)
        seconds, rc, out = _timed(test_command, clone, env, log)
        counts = re.findall(r'(\d+) (passed|failed|skipped|deselected)', out)
        result.update(seconds=round(seconds, 1), returncode=rc, counts={k: int(n) for n, k in counts})
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--commit', default='HEAD')
  parser.add_argument('--what', choices=('install', 'main', 'tests'), default='main')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--python', default=shutil.which('python3') or sys.executable)
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  commit = subprocess.run(['git', 'rev-parse', args.commit], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
  logs = pathlib.Path(args.out or 'readme_commands').with_suffix('.log')
  rows = []
  for i in range(args.repeats):
    rows.append(one(commit, args.what, args.python, logs))
    print(json.dumps(rows[-1]), flush=True)
  summary = dict(what=args.what, commit=rows[0]['commit'], date=time.strftime('%Y-%m-%d'), runs=rows,
                 seconds=[r.get('seconds') for r in rows],
                 machine=f'{os.cpu_count()} cores, {platform_name()}')
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(summary, indent=1))
  print(json.dumps(summary))


def platform_name() -> str:
  try:
    for line in open('/proc/cpuinfo'):
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  import platform
  return platform.processor() or platform.machine()


if __name__ == '__main__':
  main()
