"""A study's results: ``results.csv``, ``results.md`` and two PNG plots, from the runs' records.

``report(study, roots, out)`` reads ``study_run.json`` of every run under each root
(several roots merge the slices that different machines ran) and writes into ``out``:

- ``results.csv``: one row per run (variant, seed, status, exit code, metric, seconds,
  error, workdir); ``curves.csv``: each finished run's curve metric per step;
- ``results.md``: per variant the mean ± sample std over its finished seeds, the paper's
  number, and whether each claim reproduced: "yes" when the means are in the claimed
  order, with "(within noise)" when the gap is smaller than the standard error of the
  difference of the means; failed and missing runs are listed with their errors;
- ``curves.png`` (the curve metric per step, mean over seeds, min-max shaded) and
  ``final.png`` (the final metric per variant with ±std error bars), drawn with matplotlib.
"""

import csv
import math
import os
from typing import Optional, Sequence

from llm_jax.experiments import runner
from llm_jax.experiments import study as study_lib


def gather(study: study_lib.Study, roots: Sequence[str]) -> dict:
  """{run: (record, root)} over ``roots``; a finished record wins over a failed one."""
  found = {}
  for run in study.runs():
    for root in roots:
      record = runner.read_record(root, run)
      if record is None:
        continue
      if run not in found or (found[run][0].get('status') != 'ok' and record.get('status') == 'ok'):
        found[run] = (record, root)
  return found


def _mean_std(values: list[float]) -> tuple[float, float]:
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, float('nan')
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(study: study_lib.Study, found: dict) -> dict:
  """Per variant: values of finished seeds, mean, std, failed [(seed, code, error)], missing seeds."""
  out = {}
  for variant in study.variants:
    values, failed, missing = [], [], []
    for seed in study.seeds:
      run = study_lib.Run(variant, seed)
      if run not in found:
        missing.append(seed)
        continue
      record = found[run][0]
      if record.get('status') == 'ok':
        values.append(float(record['value']))
      else:
        failed.append((seed, record.get('exit_code'), record.get('error', '')))
    mean, std = _mean_std(values) if values else (float('nan'), float('nan'))
    out[variant] = dict(values=values, mean=mean, std=std, failed=failed, missing=missing)
  return out


def judge(claim: study_lib.Claim, summary: dict) -> tuple[Optional[bool], str]:
  """(reproduced or None when it cannot be judged, the verdict's words)."""
  a, b = summary[claim.variant], summary[claim.reference]
  if not a['values'] or not b['values']:
    return None, 'cannot judge: ' + ', '.join(v for v, s in ((claim.variant, a), (claim.reference, b))
                                               if not s['values']) + ' has no finished run'
  holds = claim.holds(a['mean'], b['mean'])
  gap = a['mean'] - b['mean']
  spread = [s['std'] ** 2 / len(s['values']) for s in (a, b) if len(s['values']) > 1]
  noise = math.sqrt(sum(spread)) if len(spread) == 2 else float('nan')
  words = 'yes' if holds else 'no'
  if math.isfinite(noise) and abs(gap) < noise:
    words += ' (within noise)'
  return holds, f'{words}: {a["mean"]:.4f} vs {b["mean"]:.4f} (gap {gap:+.4f}, standard error {noise:.4f})'


def _fmt(mean: float, std: float, n: int) -> str:
  if not n:
    return '–'
  return f'{mean:.4f}' if n < 2 else f'{mean:.4f} ± {std:.4f}'


def write_csv(study: study_lib.Study, found: dict, path: str) -> None:
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['variant', 'seed', 'status', 'exit_code', study.metric, 'seconds', 'error', 'workdir'])
    for run in study.runs():
      if run not in found:
        w.writerow([run.variant, run.seed, 'missing', '', '', '', '', ''])
        continue
      record, root = found[run]
      w.writerow([run.variant, run.seed, record.get('status'), record.get('exit_code'), record.get('value'),
                  record.get('seconds'), record.get('error', ''), runner.run_dir(root, run)])


def write_curves(study: study_lib.Study, found: dict, path: str) -> None:
  """Every finished run's curve, one row per (variant, seed, step): what curves.png draws."""
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['variant', 'seed', 'step', study.curve])
    for run in study.runs():
      if run in found and found[run][0].get('status') == 'ok':
        for step, value in found[run][0].get('curve', []):
          w.writerow([run.variant, run.seed, step, value])


def markdown(study: study_lib.Study, scale: str, summary: dict) -> str:
  verdicts = {}
  for claim in study.claims:
    verdicts.setdefault(claim.variant, []).append((claim, *judge(claim, summary)))
  lines = [f'# {study.name} ({scale} scale)', '', f'{study.paper}', '',
           f'Config `{os.path.relpath(study.config_path())}`, seeds {", ".join(map(str, study.seeds))}; '
           f'metric `{study.metric}` ({"lower" if study.lower_is_better else "higher"} is better), '
           f'mean ± sample std over seeds.', '',
           f'| variant | overrides | {study.metric} | seeds | paper | claim | reproduced? |',
           '|---|---|---|---|---|---|---|']
  for variant, overrides in study.variants.items():
    s = summary[variant]
    shown = ', '.join(f'{k}={v}' for k, v in overrides.items()) or '(base)'
    seeds = f'{len(s["values"])}/{len(study.seeds)}'
    claims = verdicts.get(variant, [])
    claim_text = '; '.join(c.describe(study.metric) for c, _, _ in claims) or '–'
    verdict = '; '.join(w.split(':')[0] for _, _, w in claims) or '–'
    lines.append(f'| {variant} | {shown} | {_fmt(s["mean"], s["std"], len(s["values"]))} | {seeds} | '
                 f'{study.published.get(variant, "–")} | {claim_text} | {verdict} |')
  if study.claims:
    lines += ['', '## Claims', '']
    for claim in study.claims:
      ok, words = judge(claim, summary)
      lines.append(f'- {claim.describe(study.metric)}: {words}')
  problems = [(v, seed, code, err) for v, s in summary.items() for seed, code, err in s['failed']]
  missing = [(v, seed) for v, s in summary.items() for seed in s['missing']]
  if problems or missing:
    lines += ['', '## Runs that did not finish', '']
    lines += [f'- {v} seed {seed}: failed (exit {code}): {err}' for v, seed, code, err in problems]
    lines += [f'- {v} seed {seed}: missing (not run yet, or run by another shard whose workdir is not '
              f'merged here)' for v, seed in missing]
  lines += ['', 'Plots: `curves.png` (per step, mean over seeds, min–max shaded), `final.png` '
            '(final metric, ±std).', '']
  return '\n'.join(lines)


def plot(study: study_lib.Study, found: dict, summary: dict, out: str) -> list[str]:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  paths = []
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for variant in study.variants:
    curves = [found[study_lib.Run(variant, s)][0]['curve'] for s in study.seeds
              if study_lib.Run(variant, s) in found and found[study_lib.Run(variant, s)][0].get('status') == 'ok']
    curves = [dict((int(step), v) for step, v in c) for c in curves if c]
    if not curves:
      continue
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    rows = [[c[s] for c in curves] for s in steps]
    mean = [sum(r) / len(r) for r in rows]
    line, = ax.plot(steps, mean, label=variant, marker='.' if len(steps) < 30 else None)
    if len(curves) > 1:
      ax.fill_between(steps, [min(r) for r in rows], [max(r) for r in rows], color=line.get_color(), alpha=0.2)
  ax.set_xlabel('step')
  ax.set_ylabel(study.curve)
  ax.set_title(f'{study.name}: {study.curve} per step (mean over seeds)')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  paths.append(os.path.join(out, 'curves.png'))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(study.variants) + 2), 4))
  names = [v for v in study.variants if summary[v]['values']]
  means = [summary[v]['mean'] for v in names]
  stds = [summary[v]['std'] if math.isfinite(summary[v]['std']) else 0.0 for v in names]
  ax.bar(range(len(names)), means, yerr=stds, capsize=4, color='tab:blue', alpha=0.8)
  ax.set_xticks(range(len(names)), names, rotation=30, ha='right')
  if means:
    low, high = min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds))
    pad = max(high - low, 1e-3) * 0.5
    ax.set_ylim(low - pad, high + pad)
  ax.set_ylabel(f'final {study.metric}')
  ax.set_title(f'{study.name}: final {study.metric}, mean ± std over seeds')
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  paths.append(os.path.join(out, 'final.png'))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)
  return paths


def report(study: study_lib.Study, scale: str, roots: Sequence[str], out: str) -> dict:
  """Writes results.csv, curves.csv, results.md, curves.png and final.png into ``out``; returns the summary."""
  os.makedirs(out, exist_ok=True)
  found = gather(study, roots)
  summary = summarize(study, found)
  write_csv(study, found, os.path.join(out, 'results.csv'))
  write_curves(study, found, os.path.join(out, 'curves.csv'))
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(markdown(study, scale, summary))
  plot(study, found, summary, out)
  return summary
