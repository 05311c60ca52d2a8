"""Text in and out (``generation.text``) and the Hugging Face-shaped ``generate``: prompts, padding,
eos, lengths, and their errors, on the tiny random decoder of test_search."""

import string

import numpy as np
import pytest

import llm_jax
from llm_jax import convert
from llm_jax import generation
from llm_jax.generation import text
from tests.generation.test_search import BASE, N, P, decode, greedy, model, prompt_rows


class LetterTokenizer:
  """Ids 1..49 are letters, 0 is eos: the duck type ``text.complete`` needs."""
  kind = 'letters'
  eos_id = 0
  letters = string.ascii_letters[:BASE.vocab_size - 1]

  def encode(self, s):
    return [self.letters.index(c) + 1 for c in s]

  def decode(self, ids):
    return ''.join(self.letters[i - 1] for i in ids)


def tiny_model(eos=None):
  kind, params = model(BASE)
  return convert.Pretrained(kind, params, LetterTokenizer(), {}) if eos is None else _WithEos(kind, params, eos)


class _WithEos:
  def __init__(self, kind, params, eos):
    self.kind, self.params, self.eos_id = kind, params, eos


def test_prompt_ids_start_with_eos_and_keep_the_end(capsys):
  tok = LetterTokenizer()
  assert text.prompt_ids(tok, '', max_len=32, max_new_tokens=27) == [tok.eos_id]
  ids = text.prompt_ids(tok, tok.letters[:40], max_len=32, max_new_tokens=27)
  assert ids == tok.encode(tok.letters[35:40])
  assert 'keeping its last 5' in capsys.readouterr().err


def test_prompt_with_unknown_characters_is_named_once(capsys):
  from llm_jax.data.tokenizers import CharTokenizer, unknown_characters
  tok = CharTokenizer('abc ')
  assert unknown_characters(tok, 'abc cab') == {}
  assert unknown_characters(tok, 'ab éé😀') == {'é': 2, '😀': 1}
  ids = text.prompt_ids(tok, 'ab éé😀', max_len=32, max_new_tokens=4)
  assert ids.count(tok.unk_id) == 3
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and '3 character(s)' in err and "'é' ×2" in err and "'😀' ×1" in err
  text.prompt_ids(tok, 'abc', max_len=32, max_new_tokens=4)
  assert capsys.readouterr().err == ''


def test_complete_is_prompt_plus_continuation_cut_at_eos_for_prompts_of_any_length():
  tok, kind_params = LetterTokenizer(), model(BASE)
  prompts = [tok.letters[:40], 'ab', 'Hello']
  out = text.complete(*kind_params, tok, prompts, max_new_tokens=N)
  for prompt, (completion,) in zip(prompts, out):
    ids = text.prompt_ids(tok, prompt, BASE.max_len, N)
    row = greedy(BASE, np.asarray([ids], np.int32), eos_ids=(0,))[0].tolist()
    row = row[:row.index(0)] if 0 in row else row
    assert completion == text.Completion(prompt + tok.decode(row), None)
  beams = text.complete(*kind_params, tok, prompts[1:], max_new_tokens=8, num_beams=3, num_return_sequences=2)
  assert [len(r) for r in beams] == [2, 2] and beams[0][0].score >= beams[0][1].score


def test_generate_counts_max_length_with_the_prompt_and_returns_prompt_plus_new_tokens():
  m = tiny_model(eos=None)
  prompt = prompt_rows()
  seqs = llm_jax.generate(m, prompt, max_length=P + 6)
  assert seqs.shape == (2, P + 6)
  np.testing.assert_array_equal(seqs[:, :P], prompt)
  np.testing.assert_array_equal(seqs[:, P:], greedy(BASE, prompt, 6))
  np.testing.assert_array_equal(llm_jax.generate(m, prompt, max_new_tokens=6, max_length=100), seqs)
  assert llm_jax.generate(m, prompt).shape == (2, 20)  # Hugging Face's default max_length


def test_generate_crops_after_the_longest_row_and_pads_with_pad_token_id():
  plain = greedy(BASE, prompt_rows(), 10)
  eos = int(plain[0, 2])
  out = llm_jax.generate(tiny_model(), prompt_rows(), max_new_tokens=10, eos_token_id=eos, pad_token_id=48,
                         return_dict_in_generate=True)
  assert out.sequences_scores is None
  for row, ref, length in zip(out.sequences[:, P:], plain, out.lengths):
    hits = np.flatnonzero(ref == eos)
    assert length == (hits[0] + 1 if len(hits) else 10)
    assert (row[length:] == 48).all() and row[:length].tolist() == ref[:length].tolist()
  assert out.sequences.shape[1] == P + out.lengths.max()


def test_generate_takes_token_lists_or_a_left_padding_mask_and_the_same_rows_come_out():
  rows = [prompt_rows(1, 3, seed=1)[0].tolist(), prompt_rows(1, 6, seed=2)[0].tolist()]
  m = tiny_model(eos=None)
  from_lists = llm_jax.generate(m, rows, max_new_tokens=5, num_beams=2)
  ids, lengths = generation.left_padded(rows)
  mask = np.arange(6)[None] >= (6 - lengths)[:, None]
  np.testing.assert_array_equal(llm_jax.generate(m, ids, mask.astype(int), max_new_tokens=5, num_beams=2), from_lists)
  alone = llm_jax.generate(m, [rows[0]], max_new_tokens=5, num_beams=2)
  np.testing.assert_array_equal(from_lists[0, 6 - 3:], alone[0])


def test_generate_beam_search_returns_num_return_sequences_rows_per_prompt_with_scores():
  out = llm_jax.generate(tiny_model(), prompt_rows(), max_new_tokens=6, num_beams=4, num_return_sequences=3,
                         early_stopping=True, return_dict_in_generate=True)
  ref = decode(BASE, prompt_rows(), 6, num_beams=4, num_return_sequences=3, early_stopping=True, eos_ids=(0,))
  assert out.sequences.shape == (6, P + 6)
  np.testing.assert_array_equal(out.sequences[:, P:], np.asarray(ref.tokens).reshape(6, 6))
  np.testing.assert_allclose(out.sequences_scores, np.asarray(ref.scores).reshape(-1))


def test_generate_sampling_is_seeded():
  m = tiny_model()
  a, b, c = (llm_jax.generate(m, prompt_rows(), do_sample=True, max_new_tokens=8, seed=s) for s in (0, 0, 1))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()


@pytest.mark.parametrize('kw, match', [
    (dict(max_length=P), f'max_length={P} leaves no room after the prompt'),
    (dict(attention_mask=np.array([[1, 1, 0, 0, 0]] * 2)), 'attention_mask must be left padding'),
    (dict(attention_mask=np.ones((2, 3))), 'attention_mask has shape'),
    (dict(do_sample=True, temperature=0.0), 'do_sample=True needs a temperature'),
    (dict(num_beams=2, num_return_sequences=4), 'num_return_sequences=4 is more than num_beams=2'),
    (dict(max_length=40), "exceed the model's 32 positions"),
])
def test_generate_mistakes_are_one_line(kw, match):
  with pytest.raises(ValueError, match=match) as e:
    llm_jax.generate(tiny_model(), prompt_rows(), **kw)
  assert '\n' not in str(e.value)
