"""The seed recipe: masked-LM fine-tuning of bert-base-uncased on Wikitext-103, as Hugging Face's

  model = AutoModelForMaskedLM.from_pretrained("bert-base-uncased")
  dataset = load_dataset("wikitext", "wikitext-103-raw-v1", split="train")
  TrainingArguments(num_train_epochs=3, per_device_train_batch_size=16, warmup_steps=500, weight_decay=0.01)

3 epochs, batch 16 per device (train.batch_size is global: 16 × the devices), warmup 500,
weight decay 0.01, AdamW at Trainer's default 5e-5 decaying linearly to 0. The data comes
from the Hub (the [hf] extra); offline, put the Hub's parquet files in a directory in their
own layout (DIR/wikitext-103-raw-v1/train-*.parquet, validation-*.parquet) and pass it:

  python -m llm_jax.main --config=configs/bert_mlm_wikitext103.py --workdir=runs/bert_wikitext \\
      --config.data.manual_dir=DIR
"""

import os

from llm_jax.config import from_file


def get_config():
  config = from_file(os.path.join(os.path.dirname(__file__), 'bert_base.py'))
  config.data.dataset = 'hf:Salesforce/wikitext'
  config.data.dataset_config = 'wikitext-103-raw-v1'
  config.data.eval_split = 'validation'
  config.data.seq_len = 512            # run_mlm.py's block size: the model's 512 positions
  config.train.epochs = 3.0
  config.train.batch_size = 16
  config.train.learning_rate = 5e-5
  config.train.warmup_steps = 500
  config.train.weight_decay = 0.01
  config.eval.every_steps = 2000
  config.eval.max_batches = 50
  config.checkpoint.every_steps = 2000
  config.log_every_steps = 100
  return config
