"""A ~1.3B-parameter decoder at context 2048, for throughput and MFU on one accelerator.

GPT-3 XL's shape (Brown et al. 2020, table 2.1): 24 layers, width 2048, 16 heads of 64,
MLP 8192, learned positions, GELU, tied embeddings; 1,279,363,072 parameters at this
32768-token vocabulary (jax.eval_shape). bf16 compute, float32 parameters and Adam
moments (~16 bytes per parameter: ~20 GiB), scanned layers, 8 rows × 2048 tokens per
step without remat (fits one 80 GB H100). The bench feeds it synthetic tokens; the data
keys are what a real run would use (lm1b, SentencePiece 32768).

  python -m llm_jax.bench --config=configs/bench_1b.py --config.model.attention_kernel=cudnn   # on a GPU
  python experiments/gpu_bench/run.py --out=DIR    # runs it as part of the GPU table
"""

import os

from llm_jax.config import from_file


def get_config():
  # gpt2_small's data (lm1b, SentencePiece 32768), optimizer, bf16 and scan; GPT-3 XL's shape.
  config = from_file(os.path.join(os.path.dirname(__file__), 'gpt2_small.py'))
  config.data.seq_len = 2048
  config.model.num_layers = 24
  config.model.num_heads = 16
  config.model.emb_dim = 2048
  config.model.mlp_dim = 8192
  config.model.use_bias = False
  config.train.batch_size = 8
  config.train.learning_rate = 2e-4
  config.train.end_learning_rate = 2e-5
  return config
