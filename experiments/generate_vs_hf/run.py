r"""Decoding speed, llm_jax against Hugging Face's PyTorch ``generate``, side by side, same weights.

  python experiments/generate_vs_hf/run.py [--shapes=gpt2,bloom] [--prompt_len=10 --max_length=50
      --num_beams=5 --rounds=3] [--out=FILE.json]

For each ``--shapes`` entry a ``transformers`` model of that architecture and size with
random weights (its own initializer) is saved as safetensors to a temporary directory and
loaded into llm_jax with ``llm_jax.from_pretrained``, so both sides hold the same weights:

  gpt2    GPT-2 small: 12 layers, width 768, 12 heads, 50,257 tokens (124M parameters)
  bloom   bloom-560m: 24 layers, width 1024, 16 heads, ALiBi, 250,880 tokens (559M)

Batch 1, float32, a random prompt of ``--prompt_len`` tokens, no eos (every call makes
``--max_length`` - ``--prompt_len`` new tokens on both sides), three decodings:

  beam     num_beams=5, early_stopping=True, max_length=50 (the issue's call)
  greedy   do_sample=False
  sample   do_sample=True, temperature 1.0, top_k 50 (Hugging Face's defaults)

Each side decodes once untimed (llm_jax compiles then), then rounds alternate between the
sides so that a busy machine slows both; the fastest round of each counts. Greedy and
beam outputs must be the same token ids on both sides (the run stops otherwise; sampling
draws from different generators). torch runs on this process's cores
(``torch.set_num_threads``). The last line printed is the JSON result (also ``--out``).
"""

import json
import os
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

FLAGS = flags.FLAGS
flags.DEFINE_list('shapes', ['gpt2', 'bloom'], 'Architectures and sizes: gpt2 (small), bloom (560m).')
flags.DEFINE_integer('prompt_len', 10, 'Prompt tokens.')
flags.DEFINE_integer('max_length', 50, 'Prompt + new tokens, as Hugging Face counts.')
flags.DEFINE_integer('num_beams', 5, 'Beams of the beam-search decoding.')
flags.DEFINE_integer('rounds', 3, 'Alternating timed rounds; the fastest of each side counts.')
flags.DEFINE_string('out', '', 'Also write the JSON result here.')

DECODINGS = {
    'beam': lambda: dict(num_beams=FLAGS.num_beams, early_stopping=True),
    'greedy': lambda: dict(do_sample=False),
    'sample': lambda: dict(do_sample=True, temperature=1.0, top_k=50),
}


def hf_model(shape: str):
  import transformers
  if shape == 'gpt2':
    return transformers.GPT2LMHeadModel(transformers.GPT2Config())
  if shape == 'bloom':
    return transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16))
  raise app.UsageError(f'--shapes: {shape!r} is not one of gpt2, bloom.')


def compare(shape: str) -> dict:
  import jax
  import numpy as np
  import torch
  import llm_jax
  torch.manual_seed(0)
  hf = hf_model(shape).eval()
  hf.generation_config.eos_token_id = None
  hf.generation_config.pad_token_id = 0
  with tempfile.TemporaryDirectory() as directory:
    hf.save_pretrained(directory, safe_serialization=True)
    ours = llm_jax.from_pretrained(directory)
  vocab = hf.config.vocab_size
  prompt = np.random.default_rng(0).integers(0, vocab, (1, FLAGS.prompt_len))
  common = dict(max_length=FLAGS.max_length, pad_token_id=0)
  new_tokens = FLAGS.max_length - FLAGS.prompt_len
  rows = {}
  for name, settings in DECODINGS.items():
    kw = dict(settings(), **common)

    def theirs():
      with torch.no_grad():
        return hf.generate(torch.tensor(prompt), attention_mask=torch.ones_like(torch.tensor(prompt)),
                           **kw).numpy()

    def mine():
      return llm_jax.generate(ours, prompt, eos_token_id=[], **kw)

    start = time.perf_counter()
    first_ours = mine()
    compile_s = time.perf_counter() - start
    first_theirs = theirs()
    if name != 'sample' and not np.array_equal(first_ours, first_theirs):
      raise SystemExit(f'{shape} {name}: the token ids differ: llm_jax {first_ours.tolist()} vs transformers '
                       f'{first_theirs.tolist()}')
    best = {'llm_jax': float('inf'), 'transformers': float('inf')}
    for _ in range(FLAGS.rounds):
      for side, fn in (('llm_jax', mine), ('transformers', theirs)):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best[side] = min(best[side], time.perf_counter() - start)
    rows[name] = dict(llm_jax_s=round(best['llm_jax'], 4), transformers_s=round(best['transformers'], 4),
                      speedup=round(best['transformers'] / best['llm_jax'], 2),
                      llm_jax_tokens_per_s=round(new_tokens / best['llm_jax'], 1),
                      transformers_tokens_per_s=round(new_tokens / best['transformers'], 1),
                      llm_jax_first_call_s=round(compile_s, 2), same_tokens=name != 'sample')
    print(shape, name, rows[name], flush=True)
  return dict(parameters=sum(p.numel() for p in hf.parameters()), vocab=vocab, decodings=rows)


def main(argv):
  del argv
  import llm_jax  # noqa: F401  (first: its XLA defaults are set before JAX starts)
  import jax
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  result = dict(date=time.strftime('%Y-%m-%d'), device=jax.devices()[0].device_kind, cores=os.cpu_count(),
                torch_threads=torch.get_num_threads(), batch=1, dtype='float32', prompt_len=FLAGS.prompt_len,
                max_length=FLAGS.max_length, num_beams=FLAGS.num_beams,
                shapes={shape: compare(shape) for shape in FLAGS.shapes})
  text = json.dumps(result)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  app.run(main)
