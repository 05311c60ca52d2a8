"""Reference T5s from ``transformers`` (PyTorch, CPU, float32) in the layouts llm_jax converts.

  't5'     the original T5: ReLU feed-forward, tied output rescaled by d_model^-0.5
  'v1_1'   T5 v1.1 / flan-t5 as published: gated-GELU, an untied lm_head, no rescaling
           (config.json says tie_word_embeddings false)
  'tied_v1_1'  gated-GELU, tied, no rescaling: what transformers 5 saves for a v1.1 config
           (scale_decoder_outputs false)

Weights are large (std 0.5 for the embedding, lm_head and feed-forward output, 0.25 for the other
projections, which T5 does not scale down; norm scales 1 + 0.3·noise) so that a wrong transpose, bucket or
scale changes the argmax.
"""

import json
import os

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file, save_file

VOCAB, WIDTH, HEAD_DIM, FF, HEADS = 120, 32, 8, 64, 4
TOLERANCE = 1e-4
LAYOUTS = ('t5', 'v1_1', 'tied_v1_1')


def hf_config(layout: str, **overrides) -> transformers.T5Config:
  fields = dict(vocab_size=VOCAB, d_model=WIDTH, d_kv=HEAD_DIM, d_ff=FF, num_layers=2, num_decoder_layers=2,
                num_heads=HEADS, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                dropout_rate=0.0, layer_norm_epsilon=1e-6, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                feed_forward_proj='relu' if layout == 't5' else 'gated-gelu')
  fields.update(overrides)
  return transformers.T5Config(**fields)


def random_t5(layout: str, directory, seed: int = 0, **overrides):
  """A T5ForConditionalGeneration of ``layout`` with large random weights saved to ``directory``; returns
  the model as transformers loads it back from there (the reference)."""
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(hf_config(layout, **overrides)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'layer_norm' in name:
        p.copy_(1 + 0.3 * torch.randn_like(p))
      else:
        p.normal_(0, 0.5 if name.endswith(("shared.weight", "lm_head.weight", "wo.weight")) else 0.25)
  directory = str(directory)
  model.save_pretrained(directory, safe_serialization=True)
  path, config_path = os.path.join(directory, 'model.safetensors'), os.path.join(directory, 'config.json')
  with open(config_path) as f:
    config = json.load(f)
  if layout == 't5':
    config['scale_decoder_outputs'] = True
  else:
    config['scale_decoder_outputs'] = False
  if layout == 'v1_1':  # as published: its own lm_head, tie_word_embeddings false
    tensors = load_file(path)
    rng = np.random.default_rng(seed + 1)
    tensors['lm_head.weight'] = rng.normal(0, 0.5, tensors['shared.weight'].shape).astype(np.float32)
    save_file(tensors, path, metadata={'format': 'pt'})
    config['tie_word_embeddings'] = False
    config.pop('scale_decoder_outputs')
  with open(config_path, 'w') as f:
    json.dump(config, f)
  return transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()


def padded_batch(seed: int = 0, batch: int = 3, source: int = 11, target: int = 7):
  """(source ids, source mask, target ids, target mask) with padding on both sides: row 0 whole, row 1
  right-padded, row 2 short (HF's tokenizers pad T5 on the right)."""
  rng = np.random.default_rng(seed)
  src, tgt = rng.integers(2, VOCAB, (batch, source)), rng.integers(2, VOCAB, (batch, target))
  smask, tmask = np.ones((batch, source), np.int64), np.ones((batch, target), np.int64)
  smask[1, 6:], smask[2, 3:], tmask[1, 4:], tmask[2, 2:] = 0, 0, 0, 0
  return src * smask, smask, tgt * tmask, tmask


def hf_logits(model, src, smask, tgt, tmask) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(src), attention_mask=torch.tensor(smask), decoder_input_ids=torch.tensor(tgt),
                 decoder_attention_mask=torch.tensor(tmask)).logits.numpy()


def ours_logits(pretrained, src, smask, tgt, tmask) -> np.ndarray:
  pos = lambda a: np.broadcast_to(np.arange(a.shape[1], dtype=np.int32), a.shape)
  return np.asarray(pretrained.kind.module.apply({'params': pretrained.params}, src, pos(src), smask, tgt, pos(tgt),
                                                 tmask))
