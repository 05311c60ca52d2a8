"""Metric output of a run: WORKDIR/metrics.jsonl and TensorBoard events, process 0 only.

``metrics.jsonl`` holds one JSON object per logged step. On resume from step K, lines
with step > K (written after the checkpoint the run resumes from) are dropped, and so is
a line torn by a crash or a full disk, so the file always describes one consistent history.
"""

import json
import math
import os

import jax


class MetricsWriter:

  def __init__(self, workdir: str, resume_step: int):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if not self.active:
      return
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if _step_of(line) <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(kept)
    from tensorboardX import SummaryWriter
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step=resume_step + 1)

  def write(self, step: int, values: dict) -> None:
    if not self.active:
      return
    clean = {k: _plain(v) for k, v in values.items()}
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **clean}) + '\n')
    for k, v in clean.items():
      if isinstance(v, (int, float)) and math.isfinite(v):
        self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _step_of(line: str) -> float:
  """The step of a metrics line; a torn or empty line (a crash mid-write) counts as after any step."""
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError, TypeError):
    return float('inf')


def _plain(v):
  v = v.item() if hasattr(v, 'item') else v
  return float(v) if isinstance(v, float) else v
