"""Text data: sources -> tokenizer -> packed, resumable batches (see pipeline.py)."""

from llm_jax.data.pipeline import Dataset, load, prefetch
from llm_jax.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer

__all__ = ['Dataset', 'Tokenizer', 'build_tokenizer', 'load', 'load_tokenizer', 'prefetch']
