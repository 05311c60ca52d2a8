"""Same weights, same prompts, same token ids: ``llm_jax.generate`` against ``transformers``' ``generate``
(PyTorch, CPU, float32) for random GPT-2, BLOOM and Llama models loaded with ``llm_jax.from_pretrained``.

The weights are large (``decoder_refs``), so the argmax moves from token to token and a
cache or position bug changes the output. The eos token is the one the model's greedy
output uses most, so that beams finish at many different lengths and the early-stopping
rules, the length penalty and min_length decide the result.

The beam cases cover the places Hugging Face's own beam search was wrong and fixed: the
best possible score of a running beam depends on the sign of the length penalty
(transformers #20901, standardized with early_stopping='never' in #21368: penalties 2.0
and -0.5 under each mode), a decoder-only model's scores are normalized by the new tokens,
not the prompt (#27351: prompts of 9 tokens), and each prompt of a batch stops by itself
(#38778: three prompts in one batch).
"""

import functools

import numpy as np
import pytest
import torch

import llm_jax
from tests.convert import decoder_refs

FAMILIES = ('gpt2', 'bloom', 'llama')
MAX_LENGTH = 50


@functools.lru_cache(maxsize=None)
def pair(family: str, tmp_root: str):
  """(transformers model, llm_jax model) with the same weights."""
  directory = f'{tmp_root}/{family}'
  hf = decoder_refs.random_model(family, directory, seed=3)
  hf.generation_config.eos_token_id = None  # each call says which eos, if any
  return hf, llm_jax.from_pretrained(directory)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('hf_generate'))


def prompts():
  ids, mask = decoder_refs.left_padded(seed=1, batch=3, length=9)
  return ids, mask


def hf_generate(hf, ids, mask, **kw):
  with torch.no_grad():
    out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw)
  return out.numpy()


@functools.lru_cache(maxsize=None)
def frequent_token(family: str, tmp_root: str) -> int:
  """The token the model's greedy continuation of the prompts uses most (the eos of the beam tests)."""
  hf, _ = pair(family, tmp_root)
  ids, mask = prompts()
  out = hf_generate(hf, ids, mask, max_length=MAX_LENGTH, do_sample=False, eos_token_id=None, pad_token_id=0)
  values, counts = np.unique(out[:, ids.shape[1]:], return_counts=True)
  return int(values[np.argmax(counts)])


@pytest.mark.parametrize('family', FAMILIES)
def test_greedy_tokens_equal_transformers(family, root):
  hf, ours = pair(family, root)
  ids, mask = prompts()
  want = hf_generate(hf, ids, mask, max_length=MAX_LENGTH, do_sample=False, eos_token_id=None, pad_token_id=0)
  got = llm_jax.generate(ours, ids, mask, max_length=MAX_LENGTH, eos_token_id=[], pad_token_id=0)
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(want[:, ids.shape[1]:])) > 10  # the argmax is not one token everywhere
  eos = frequent_token(family, root)
  want = hf_generate(hf, ids, mask, max_length=MAX_LENGTH, do_sample=False, eos_token_id=eos, pad_token_id=0)
  np.testing.assert_array_equal(llm_jax.generate(ours, ids, mask, max_length=MAX_LENGTH, eos_token_id=eos,
                                                 pad_token_id=0), want)


BEAM_CASES = {  # name -> generate's arguments besides the prompts
    'issue': dict(num_beams=5, early_stopping=True),
    'heuristic': dict(num_beams=5, early_stopping=False),
    'never': dict(num_beams=5, early_stopping='never'),
    'length_penalty': dict(num_beams=4, early_stopping=False, length_penalty=2.0, min_length=14),
    'never_short': dict(num_beams=3, early_stopping='never', length_penalty=-0.5, num_return_sequences=3),
}


# Every case on GPT-2, the case on each family; the rest of the matrix is slow.
MATRIX = [pytest.param(f, c, marks=() if f == 'gpt2' or c == 'issue' else pytest.mark.slow)
          for f in FAMILIES for c in BEAM_CASES]


@pytest.mark.parametrize('family, case', MATRIX)
def test_beam_search_tokens_and_scores_equal_transformers(family, case, root):
  """Prompts of 9, 5 and 2 tokens in one left-padded batch; the eos a frequent token."""
  hf, ours = pair(family, root)
  ids, mask = prompts()
  # pad 1, not 0: Hugging Face fills finished beams with `pad_token_id or eos`, the eos for a pad id of 0
  kw = dict(BEAM_CASES[case], max_length=MAX_LENGTH, eos_token_id=frequent_token(family, root), pad_token_id=1)
  with torch.no_grad():
    want = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False, output_scores=True,
                       return_dict_in_generate=True, **kw)
  got = llm_jax.generate(ours, ids, mask, return_dict_in_generate=True, **kw)
  np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
  np.testing.assert_allclose(got.sequences_scores, want.sequences_scores.numpy(), rtol=1e-4, atol=1e-4)
  if case == 'issue':  # beams finished at different lengths: the stopping rules were exercised
    assert len(set(got.lengths.tolist())) > 1
