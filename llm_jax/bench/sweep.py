"""Bench runs in fresh processes: config sweeps, and FSDP memory scaling across device counts.

Sweep entries are ``configs/NAME.py[:key=value;key=value]`` (keys as after
``--config.``), comma-separated on the command line, or one a line in a .txt file
(``#`` starts a comment), or a .json list of such strings or of
``{"config": PATH, "overrides": {KEY: VALUE}}``. Each entry runs as its own
``python -m llm_jax.bench`` process, so XLA flags, compilation caches and memory start
clean; its last JSON line becomes a row, and a failed run a row with its error (for a
refused config, the refusal line). ``write_table`` writes PREFIX.json (every row in
full) and PREFIX.md.

Memory scaling compiles the train step (nothing runs) for one config twice: on one
device, and on a mesh with fsdp = N devices (data = tensor = 1). A process sees a fixed
number of devices, so a count this process does not have is measured in a child
process on N simulated CPU devices (``python -m llm_jax.bench.memory CONFIG_JSON VOCAB``, in memory.py).
"""

import json
import os
import re
import subprocess
import sys

from llm_jax import errors

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------- sweeps

def _parse_one(entry: str) -> tuple[str, dict]:
  path, _, rest = entry.strip().partition(':')
  overrides = {}
  for item in filter(None, (s.strip() for s in rest.split(';'))):
    key, eq, value = item.partition('=')
    if not eq:
      raise errors.ConfigError(f'sweep entry {entry!r}: override {item!r} is not key=value.')
    overrides[key.strip().removeprefix('config.')] = value.strip()
  return path, overrides


def parse_entries(spec: str) -> list[tuple[str, dict]]:
  """[(config path, {key: value})] from a comma-separated list, a .txt or a .json file."""
  if spec.endswith('.json') and os.path.isfile(spec):
    with open(spec) as f:
      items = json.load(f)
    return [_parse_one(x) if isinstance(x, str) else (x['config'], dict(x.get('overrides', {})))
            for x in items]
  if spec.endswith('.txt') and os.path.isfile(spec):
    with open(spec) as f:
      lines = [line.split('#', 1)[0].strip() for line in f]
    return [_parse_one(line) for line in lines if line]
  # A comma starts a new entry only before a 'PATH.py': override values may hold commas.
  return [_parse_one(e) for e in re.split(r',(?=\s*[^,;:=]+\.py(?::|,|$))', spec) if e.strip()]


def last_json(text: str):
  for line in reversed(text.strip().splitlines()):
    try:
      value = json.loads(line)
    except ValueError:
      continue
    if isinstance(value, dict):
      return value
  return None


def run_entry(path: str, overrides: dict, flags: list[str], *, env=None, timeout=None) -> dict:
  """One ``python -m llm_jax.bench`` process: {'config', 'overrides', 'result'} or {..., 'error'}."""
  command = [sys.executable, '-m', 'llm_jax.bench', f'--config={path}',
             *[f'--config.{k}={v}' for k, v in overrides.items()], *flags]
  row = dict(config=path, overrides=';'.join(f'{k}={v}' for k, v in overrides.items()))
  env = dict(os.environ if env is None else env)
  env['PYTHONPATH'] = os.pathsep.join([_ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
  try:  # in this process's directory, so relative config paths mean what they meant here
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(row, error=f'timed out after {timeout} s')
  result = last_json(proc.stdout) if proc.returncode == 0 else None
  if result is None:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    refusal = [line for line in lines if line.startswith('llm_jax: ')]
    return dict(row, error=f'exit {proc.returncode}: ' + ((refusal or lines or ['no output'])[-1])[:2000])
  return dict(row, result=result)


def _fmt(value, digits=3) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.{digits}g}' if abs(value) < 1000 else f'{value:.0f}'
  return str(value)


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
  """(header, cells) of the Markdown table; decode and memory columns only where rows have them."""
  results = [r.get('result') or {} for r in rows]
  batches = sorted({b for r in results for b in (r.get('decode') or {}).get('batches', {})}, key=int)
  memory = any('memory' in r for r in results)
  header = ['config', 'overrides', 'device', 'step ms', 'tokens/s', 'MFU', 'compile s', 'peak memory GiB']
  for b in batches:
    header += [f'decode tok/s b={b}', f'prefill ms b={b}', f'ms/token b={b}', f'cache speedup b={b}']
  if memory:
    header += ['memory 1 dev GiB', 'memory fsdp GiB', 'fsdp ratio']
  header.append('error')
  cells = []
  for row, r in zip(rows, results):
    decode = r.get('decode') or {}
    line = [row['config'], row.get('overrides', ''), r.get('device') or decode.get('device', ''),
            _fmt(r.get('step_ms')), _fmt(r.get('tokens_per_sec')), _fmt(r.get('mfu')), _fmt(r.get('compile_s')),
            _fmt(r.get('peak_memory_gib'))]
    for b in batches:
      d = decode.get('batches', {}).get(b, {})
      line += [_fmt(d.get('tokens_per_sec')), _fmt(d.get('prefill_ms')), _fmt(d.get('per_token_ms')),
               _fmt(d.get('speedup_vs_no_cache'))]
    if memory:
      m = r.get('memory') or {}
      line += [_fmt((m.get('single') or {}).get('peak_memory_gib')),
               _fmt((m.get('sharded') or {}).get('peak_memory_gib')), _fmt(m.get('ratio'))]
    line.append(row.get('error', '').replace('|', '/'))
    cells.append(line)
  return header, cells


def write_table(rows: list[dict], prefix: str) -> tuple[str, str]:
  """Writes PREFIX.json and PREFIX.md; returns their paths."""
  if os.path.dirname(prefix):
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
  with open(prefix + '.json', 'w') as f:
    json.dump(rows, f, indent=1)
  header, cells = table_rows(rows)
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(c.replace('\n', ' ') for c in line) + ' |' for line in cells]
  with open(prefix + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return prefix + '.json', prefix + '.md'


def run_sweep(entries: list[tuple[str, dict]], flags: list[str], prefix: str, *, mode: str = 'train',
              env=None, timeout=None) -> dict:
  """Runs every entry in its own process (one after another), writes the table, returns the summary."""
  flags = [f for f in flags if not f.startswith('--mode=')] + [f'--mode={mode}']
  rows = []
  for path, overrides in entries:
    rows.append(run_entry(path, overrides, flags, env=env, timeout=timeout))
    print(f'[llm_jax.bench] {path} {rows[-1]["overrides"]}: '
          f'{"error " + rows[-1]["error"] if "error" in rows[-1] else "done"}', file=sys.stderr, flush=True)
  json_path, md_path = write_table(rows, prefix)
  return dict(mode=mode, sweep_json=json_path, sweep_md=md_path, rows=len(rows),
              errors=sum('error' in r for r in rows))
