"""Batches built ahead of the training step: `prefetch` runs an iterator in a background thread."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator


class prefetch:
  """Runs `iterator` up to `size` items ahead in a background thread (e.g. building
  NumPy batches and `jax.device_put`), starting at once.

  Iterate it like the iterator itself. An exception raised by the iterator is
  re-raised in the consumer at the item where it happened. `close()`, leaving a
  ``with`` block, or dropping the last reference stops the thread (`close` also
  joins it).
  """

  _DONE = object()

  def __init__(self, iterator: Iterable, size: int = 2):
    self._items: queue.Queue = queue.Queue(maxsize=max(1, size))
    self._stop = threading.Event()
    self._finished = False
    self._thread = threading.Thread(target=_produce, args=(iter(iterator), self._items, self._stop),
                                    name='prefetch', daemon=True)
    self._thread.start()

  def __iter__(self) -> 'prefetch':
    return self

  def __next__(self):
    if self._finished:
      raise StopIteration
    item, error = self._items.get()
    if item is self._DONE or error is not None:
      self.close()
      if error is not None:
        raise error
      raise StopIteration
    return item

  def close(self) -> None:
    self._finished = True
    self._stop.set()
    if self._thread is not threading.current_thread():
      self._thread.join(timeout=10)

  def __enter__(self) -> 'prefetch':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self) -> None:
    self._stop.set()


def _produce(iterator: Iterator, items: queue.Queue, stop: threading.Event) -> None:
  """The prefetch thread: holds no reference to the `prefetch` object itself."""
  def put(entry) -> bool:
    while not stop.is_set():
      try:
        items.put(entry, timeout=0.05)
        return True
      except queue.Full:
        pass
    return False

  try:
    for item in iterator:
      if not put((item, None)):
        return
    put((prefetch._DONE, None))
  except BaseException as e:  # handed to the consumer
    put((prefetch._DONE, e))
