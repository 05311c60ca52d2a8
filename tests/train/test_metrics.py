"""metrics.jsonl on resume: later steps and torn lines are dropped."""

import json

from llm_jax.train import metrics


def test_resume_drops_later_and_torn_lines(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "train_loss": 3.0}\n{"step": 2, "train_loss": 2.5}\n'
                  '{"step": 3, "train_loss": 2.0}\n{"step": 4, "tra')
  writer = metrics.MetricsWriter(str(tmp_path), resume_step=2)
  writer.write(3, {'train_loss': 1.5})
  writer.close()
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert rows == [{'step': 1, 'train_loss': 3.0}, {'step': 2, 'train_loss': 2.5}, {'step': 3, 'train_loss': 1.5}]
