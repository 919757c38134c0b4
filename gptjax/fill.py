"""Filling in masked text with a masked-LM run (train.objective='mlm'): BERT's fill-mask.

    text with [MASK] markers ──the run's tokenizer──▶ ids (each [MASK] is one mask token)
    ──bidirectional forward──▶ P(token | the whole text) at each masked position
    ──▶ the text with each [MASK] replaced by its most likely token, and each position's top candidates

Each [MASK] stands for exactly one token: one character for a char run, one byte for a byte run.
By default every position is predicted in one forward pass, from the unmasked text alone (as BERT
is evaluated); `iterative` instead fixes the most confident position first and predicts the rest
again with it filled in, one pass per masked position.

Run: python -m gptjax.fill --workdir=runs/mlm_char --text="To be, or not to [MASK][MASK], that is"
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import data as data_lib
from gptjax.errors import GptjaxError
from gptjax.model import GPT, GPTConfig


@dataclasses.dataclass(frozen=True)
class Slot:
  """One masked position: its token index in the text's ids and its top candidates."""

  index: int
  candidates: tuple[tuple[str, float], ...]  # (token text, probability), most likely first


@dataclasses.dataclass(frozen=True)
class Filled:
  text: str  # the text with every [MASK] replaced by the chosen token
  slots: tuple[Slot, ...]  # in text order


@functools.partial(jax.jit, static_argnames=('config', 'n_real'))
def _probabilities(params, ids, *, config: GPTConfig, n_real: int):
  """ids [seq] -> P(token) [seq, n_real] float32 over the real tokens (never [MASK] or padding ids)."""
  logits = GPT(config).apply({'params': params}, ids[None])[0]  # [seq, vocab]
  return jax.nn.softmax(logits[:, :n_real], axis=-1)


def fill(params, config: GPTConfig, tokenizer, text: str, *, top_k: int = 5, iterative: bool = False) -> Filled:
  """Fills every MASK_TOKEN in `text` with the most likely token of a bidirectional (mlm) model.

  tokenizer: the run's tokenizer, which has the mask token (data.with_mask_token).
  """
  if config.causal:
    raise GptjaxError('fill needs a masked-LM model (bidirectional, train.objective=mlm); this one is '
                      'causal: continue text with python -m gptjax.sample')
  if not isinstance(top_k, int) or top_k < 1:
    raise GptjaxError(f'top_k={top_k} must be an integer >= 1')
  mask_id = tokenizer.special_ids[data_lib.MASK_TOKEN]
  n_real = tokenizer.base.vocab_size
  ids = np.asarray(tokenizer.encode(text), np.int32)
  masked = [int(i) for i in np.flatnonzero(ids == mask_id)]
  if not masked:
    raise GptjaxError(f'the text has no {data_lib.MASK_TOKEN}: mark each token to fill with {data_lib.MASK_TOKEN}')
  if len(ids) > config.block_size:
    raise GptjaxError(f'the text is {len(ids)} tokens long, more than the {config.block_size} positions the '
                      'model supports; shorten it')
  top_k = min(top_k, n_real)
  probs = lambda: np.asarray(_probabilities(params, jnp.asarray(ids), config=config, n_real=n_real))
  slots = {}
  p = probs()
  while masked:
    # Parallel: every position from this one pass. Iterative: only the most confident, then again.
    chosen = masked if not iterative else [max(masked, key=lambda i: p[i].max())]
    for i in chosen:
      order = np.argsort(-p[i], kind='stable')[:top_k]
      slots[i] = Slot(i, tuple((tokenizer.decode([int(t)]), float(p[i, t])) for t in order))
      ids[i] = order[0]
      masked.remove(i)
    if masked:
      p = probs()
  return Filled(text=tokenizer.decode(ids), slots=tuple(slots[i] for i in sorted(slots)))


def fill_from_workdir(workdir: str, text: str, *, top_k: int = 5, iterative: bool = False,
                      step: int | None = None) -> Filled:
  """fill() with the parameters and tokenizer of the run in workdir (latest checkpoint, or `step`)."""
  from gptjax.run import load_run  # the run's checkpoint, config and tokenizer
  if not text:
    raise GptjaxError(f'the text is empty; give one with --text, marking the tokens to fill with {data_lib.MASK_TOKEN}')
  params, config, tokenizer, _ = load_run(workdir, step)
  if config.causal:
    raise GptjaxError(f'{workdir} is a next-token (causal) run: it continues text rather than filling in '
                      f'masks; use python -m gptjax.sample --workdir={workdir} --prompt=TEXT')
  return fill(params, config, tokenizer, text, top_k=top_k, iterative=iterative)


def main():
  """python -m gptjax.fill --workdir=DIR --text="...[MASK]..." [--top_k=5] [--iterative] [--step=N]"""
  from absl import flags

  from gptjax import cli

  flags.DEFINE_string('workdir', None, 'Run directory of a masked-LM run (train.objective=mlm).')
  flags.DEFINE_string('text', None, f'Text with {data_lib.MASK_TOKEN} where a token is to be filled in '
                      '(one token each: a character for char runs, a byte for byte runs).')
  flags.DEFINE_integer('top_k', 5, 'Candidates to print for each masked position.')
  flags.DEFINE_bool('iterative', False, 'Fill the most confident position first, then predict the rest '
                    'again (one pass per mask) instead of all from one pass.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to load (default: the latest).')
  cli.define_common()

  def run(argv):
    cli.no_extra_arguments(argv)
    f = flags.FLAGS
    if not f.workdir:
      raise GptjaxError('--workdir is required: the masked-LM run directory to fill with')
    if f.text is None:
      raise GptjaxError(f'--text is required: the text to fill, with {data_lib.MASK_TOKEN} at each token to fill')
    result = fill_from_workdir(f.workdir, cli.unescape(f.text), top_k=f.top_k, iterative=f.iterative,
                               step=f.step)
    print(result.text)
    for n, slot in enumerate(result.slots, 1):
      shown = '  '.join(f'{token!r} {prob:.3f}' for token, prob in slot.candidates)
      print(f'{data_lib.MASK_TOKEN} {n} (token {slot.index}): {shown}')

  cli.run(run)


if __name__ == '__main__':
  main()
