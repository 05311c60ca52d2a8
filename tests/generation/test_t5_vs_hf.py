"""Same token ids as transformers' T5ForConditionalGeneration.generate, on random T5s of both layouts.

The sources are right-padded (as T5's tokenizer pads); the eos is the model's most frequent greedy
token, so beams end at different lengths. pad 0 is T5's (and the decoder start token): Hugging Face's
beam search then fills finished rows with the eos, which ``llm_jax.generate`` does too.
"""

import numpy as np
import pytest
import torch

from llm_jax import convert
from llm_jax.generation import api
from tests.convert import t5_refs

CASES = {
    'greedy': dict(num_beams=1),
    'beam5_early': dict(num_beams=5, early_stopping=True),  # the case
    'beam5_false': dict(num_beams=5, early_stopping=False),
    'beam5_never_lp2_r3': dict(num_beams=5, early_stopping='never', length_penalty=2.0, num_return_sequences=3),
}


@pytest.fixture(scope='module', params=['t5', 'v1_1'])
def models(request, tmp_path_factory):
  directory = tmp_path_factory.mktemp(request.param)
  reference = t5_refs.random_t5(request.param, directory)
  pre = convert.from_pretrained(str(directory))
  rng = np.random.default_rng(0)
  source = rng.integers(2, t5_refs.VOCAB, (3, 9))
  mask = np.ones_like(source)
  mask[1, 5:], mask[2, 2:] = 0, 0
  source = source * mask
  with torch.no_grad():
    greedy = reference.generate(torch.tensor(source), attention_mask=torch.tensor(mask), max_length=30,
                                do_sample=False, eos_token_id=None).numpy()
  values, counts = np.unique(greedy[:, 1:], return_counts=True)
  assert len(values) >= 5  # the argmax moves
  return reference, pre, source, mask, int(values[counts.argmax()]), request.param


@pytest.mark.parametrize('case', list(CASES))
def test_generate_gives_the_same_token_ids(models, case):
  reference, pre, source, mask, eos, layout = models
  settings = CASES[case]
  with torch.no_grad():
    ref = reference.generate(torch.tensor(source), attention_mask=torch.tensor(mask), max_length=50, eos_token_id=eos,
                             pad_token_id=0, do_sample=False, return_dict_in_generate=True, output_scores=True,
                             **settings)
  ours = api.generate(pre, source, mask, max_length=50, eos_token_id=eos, pad_token_id=0,
                      return_dict_in_generate=True, **settings)
  np.testing.assert_array_equal(ours.sequences, ref.sequences.numpy())
  if settings['num_beams'] > 1:
    np.testing.assert_allclose(ours.sequences_scores, ref.sequences_scores.numpy(), atol=1e-4)
  if case == 'beam5_early' and layout == 't5':  # (the v1.1 model's beams all run to max_length)
    assert len(set(ours.lengths.tolist())) > 1  # beams ended at different lengths


def test_token_lists_are_right_padded_like_the_array(models):
  _, pre, source, mask, eos, _ = models
  rows = [list(r[m.astype(bool)]) for r, m in zip(source, mask)]
  as_lists = api.generate(pre, rows, max_length=20, eos_token_id=eos, num_beams=3)
  as_array = api.generate(pre, source, mask, max_length=20, eos_token_id=eos, num_beams=3)
  np.testing.assert_array_equal(as_lists, as_array)


def test_seq2seq_mistakes_are_one_line(models):
  _, pre, source, mask, _, _ = models
  with pytest.raises(ValueError, match='max_length=1 leaves no room after the decoder start token'):
    api.generate(pre, source, mask, max_length=1)
  bad = mask.copy()
  bad[0] = 0
  with pytest.raises(ValueError, match='a source row is all padding'):
    api.generate(pre, source, bad, max_length=5)
  with pytest.raises(ValueError, match='decodes from a source'):
    api.decode(pre.kind, pre.params, np.zeros((1, 1), np.int32), max_new_tokens=3)
