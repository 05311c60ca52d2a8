"""Metric output of a run: WORKDIR/metrics.jsonl, samples.jsonl and TensorBoard events, process 0 only.

``metrics.jsonl`` holds one JSON object per logged step; ``samples.jsonl`` one per
evaluation that decoded ``config.sample.eval_prompts`` ({'step', 'samples': {prompt:
text}}), which also go to TensorBoard's text tab. On resume from step K, lines with step
> K (written after the checkpoint the run resumes from) are dropped, and so is a line
torn by a crash or a full disk, so the files always describe one consistent history.
"""

import json
import math
import os

import jax


class MetricsWriter:

  def __init__(self, workdir: str, resume_step: int):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.samples_path = os.path.join(workdir, 'samples.jsonl')
    self._tb = None
    if not self.active:
      return
    for path in (self.path, self.samples_path):
      if os.path.exists(path):
        with open(path) as f:
          kept = [line for line in f if _step_of(line) <= resume_step]
        with open(path, 'w') as f:
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

  def write_samples(self, step: int, samples: dict) -> None:
    """{prompt: completion} decoded at ``step``: a samples.jsonl line and one TensorBoard text per prompt."""
    if not self.active:
      return
    with open(self.samples_path, 'a') as f:
      f.write(json.dumps({'step': step, 'samples': samples}, ensure_ascii=False) + '\n')
    for i, text in enumerate(samples.values()):
      self._tb.add_text(f'samples/{i}', '    ' + text.replace('\n', '\n    '), step)  # markdown: as code

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
