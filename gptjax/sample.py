"""Sampling text from a trained run: load its checkpoint and tokenizer, then `decode.generate`.

Run: python -m gptjax.sample --workdir=runs/shakespeare_char --prompt="ROMEO:" --max_new_tokens=50
     python -m gptjax.sample --workdir=runs/shakespeare_char --prompts_file=prompts.txt --format=jsonl

Many prompts (a file, one per line) and many samples of each are decoded as one ragged batch of
rows, `batch_size` rows per `decode.generate` call, printed as each call finishes. Row r of the
whole request (prompt p, sample s: r = p * num_samples + s) draws from fold_in(key(seed), r), so
a sample is the same whatever batch_size is and whatever else the file holds before or after it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Iterator, Sequence

import jax
import numpy as np
from tqdm import tqdm

from gptjax import decode
from gptjax.errors import GptjaxError
from gptjax.run import load_run  # also re-exported: gptjax.sample.load_run

BATCH_SIZE = 64  # rows (prompt x sample pairs) per decode.generate call


@dataclasses.dataclass(frozen=True)
class Sample:
  prompt_index: int  # which prompt (0-based: the line of a prompts file, less one)
  sample_index: int  # which of that prompt's num_samples
  prompt: str
  text: str  # the continuation alone, cut at the stop text if one was given

  def to_json(self) -> str:
    return json.dumps({'prompt_index': self.prompt_index, 'sample_index': self.sample_index,
                       'prompt': self.prompt, 'continuation': self.text}, ensure_ascii=False)


def generate_texts(params, model_config, tokenizer, prompts: Sequence[str], *, max_new_tokens: int | None = None,
                   temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                   num_samples: int = 1, stop: str = '', batch_size: int = BATCH_SIZE,
                   where=lambda i: f'prompt {i}') -> Iterator[Sample]:
  """num_samples continuations of each prompt, as an iterator of Samples in order (prompt by prompt),
  batch_size rows per compiled generation, each batch generated when the iterator reaches it. Every
  argument and prompt is checked when this is called, before anything is generated.

  max_new_tokens=None continues each prompt to the end of the model's context (block_size positions
  less its own length); more is fine: a row that fills the context keeps its last block_size // 2
  tokens and goes on. where(i): how an error names prompt i (e.g. 'line 3 of prompts.txt').
  """
  if num_samples < 1:
    raise GptjaxError(f'num_samples={num_samples} must be >= 1')
  if batch_size < 1:
    raise GptjaxError(f'batch_size={batch_size} must be >= 1 (rows per compiled generation)')
  if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
    raise GptjaxError(f'max_new_tokens={max_new_tokens} must be an integer >= 1')
  if not model_config.causal:
    raise GptjaxError('this is a masked-LM run (bidirectional): it fills in masked text rather than continuing '
                      'it; use python -m gptjax.fill --workdir=DIR --text="...[MASK]..."')
  block = model_config.block_size
  ids, wanted = [], []  # per prompt: its tokens, and how many to generate
  for i, prompt in enumerate(prompts):
    try:
      if not prompt:
        raise GptjaxError('the prompt is empty (an empty prompt has nothing to continue)')
      ids.append([int(t) for t in tokenizer.encode(prompt)])
    except GptjaxError as e:
      raise GptjaxError(f'{where(i)}: {e}' if len(prompts) > 1 else str(e)) from None
    if max_new_tokens is None and len(ids[-1]) >= block:
      raise GptjaxError(f'{where(i) + ": " if len(prompts) > 1 else ""}the prompt ({len(ids[-1])} tokens) fills '
                        f'the {block} positions the model supports, leaving no room to generate; shorten it '
                        'or give --max_new_tokens to slide past the context')
    wanted.append(max_new_tokens or block - len(ids[-1]))
  if not ids:
    raise GptjaxError('no prompts given')
  stop_ids = [int(t) for t in tokenizer.encode(stop)] if stop else []
  decode.Sampling.checked(temperature, top_k, top_p, model_config.vocab_size, tokenizer.vocab_size)
  return _generate_rows(params, model_config, tokenizer, prompts, ids, wanted, temperature=temperature,
                        top_k=top_k, top_p=top_p, seed=seed, num_samples=num_samples, stop=stop,
                        stop_ids=stop_ids, batch_size=batch_size)


def _generate_rows(params, model_config, tokenizer, prompts, ids, wanted, *, temperature, top_k, top_p, seed,
                   num_samples, stop, stop_ids, batch_size) -> Iterator[Sample]:
  """generate_texts' generation, once its arguments are checked: one decode.generate call per batch."""
  rows = [(p, s) for p in range(len(ids)) for s in range(num_samples)]
  rng = jax.random.PRNGKey(seed)
  for start in range(0, len(rows), batch_size):
    part = rows[start:start + batch_size]
    n_new = max(wanted[p] for p, _ in part)
    result = decode.generate(
        params, model_config, [ids[p] for p, _ in part], rng, max_new_tokens=n_new, temperature=temperature,
        top_k=top_k, top_p=top_p, real_vocab_size=tokenizer.vocab_size,
        stop_sequences=[stop_ids] if stop_ids else (), row_ids=np.arange(start, start + len(part)))
    tokens, lengths = jax.device_get((result.tokens, result.lengths))
    for (p, s), row, n in zip(part, tokens, lengths):
      text = tokenizer.decode(row[:min(int(n), wanted[p])])
      # Cut at the text as well: a tokenizer can spell the stop text with other tokens than its own
      # encoding, which the loop looks for (it ends a row early, and the batch once all have stopped).
      yield Sample(p, s, prompts[p], text.split(stop, 1)[0] if stop else text)


def sample_from_workdir(workdir: str, prompt: str, *, max_new_tokens: int | None = None, temperature: float = 0.8,
                        top_k: int = 0, top_p: float = 1.0, seed: int = 0, num_samples: int = 1,
                        stop: str = '', step: int | None = None, batch_size: int = BATCH_SIZE) -> list[str]:
  """num_samples continuations of prompt (the prompt itself not included), cut at `stop` if given.

  max_new_tokens=None generates up to the end of the model's context (block_size positions); more
  is fine: a sample that fills the context keeps its last block_size // 2 tokens and goes on.
  """
  if not prompt:
    raise GptjaxError('the prompt is empty; give at least one character with --prompt')
  if num_samples < 1:
    raise GptjaxError(f'num_samples={num_samples} must be >= 1')
  # Cheap argument checks before loading anything.
  if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
    raise GptjaxError(f'max_new_tokens={max_new_tokens} must be an integer >= 1')
  params, model_config, tokenizer = _load_causal_run(workdir, step)
  return [s.text for s in generate_texts(
      params, model_config, tokenizer, [prompt], max_new_tokens=max_new_tokens, temperature=temperature,
      top_k=top_k, top_p=top_p, seed=seed, num_samples=num_samples, stop=stop, batch_size=batch_size)]


def _load_causal_run(workdir: str, step: int | None):
  """(params, model config, tokenizer) of a next-token run, or GptjaxError pointing a masked-LM run to fill."""
  params, model_config, tokenizer, _ = load_run(workdir, step)
  if not model_config.causal:
    raise GptjaxError(f'{workdir} is a masked-LM run (bidirectional): it fills in masked text rather than '
                      f'continuing it; use python -m gptjax.fill --workdir={workdir} --text="...[MASK]..."')
  return params, model_config, tokenizer


def read_prompts(path: str, unescape=lambda line: line) -> list[str]:
  """The prompts in a text file, one per line (a final newline ends the last one), each passed
  through unescape (the command line's \\n, \\t, \\\\); GptjaxError for a file that cannot be read, is
  not UTF-8, holds no prompt, or has an empty line."""
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise GptjaxError(f'--prompts_file={path} is not UTF-8 text (byte {e.start}); save it as UTF-8') from None
  except OSError as e:
    raise GptjaxError(f'cannot read --prompts_file={path}: {e.strerror or e}') from None
  lines = text.split('\n')
  if lines[-1] == '':
    lines.pop()  # the newline that ends the last line
  if not lines:
    raise GptjaxError(f'--prompts_file={path} holds no prompts; write one prompt per line')
  for n, line in enumerate(lines, 1):
    if not line.strip('\r'):
      raise GptjaxError(f'line {n} of {path} is empty: every line is a prompt, and an empty one has nothing '
                        'to continue (write \\n for a newline inside a prompt)')
  return [unescape(line.rstrip('\r')) for line in lines]


def main():
  """python -m gptjax.sample --workdir=DIR [--prompt=TEXT | --prompts_file=FILE] [sampling flags]"""
  from absl import flags

  from gptjax import cli, cpu

  flags.DEFINE_string('workdir', None, 'Run directory holding checkpoints/ and tokenizer.json.')
  flags.DEFINE_string('prompt', '\n', 'Text to continue.')
  flags.DEFINE_string('prompts_file', None, 'A UTF-8 text file of prompts, one per line (\\n, \\t and \\\\ '
                      'as in --prompt), each continued num_samples times; instead of --prompt.')
  flags.DEFINE_integer('max_new_tokens', None,
                       "Tokens to generate per sample (default: up to the end of the model's context; "
                       'past it, a sample keeps its last block_size // 2 tokens and goes on).')
  flags.DEFINE_float('temperature', 0.8, 'Softmax temperature; 0 = greedy.')
  flags.DEFINE_integer('top_k', 0, 'Keep the k most likely tokens (0 = all).')
  flags.DEFINE_float('top_p', 1.0, 'Keep the smallest set of tokens whose probability reaches p.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_integer('num_samples', 1, 'Independent samples of each prompt, generated as one batch.')
  flags.DEFINE_integer('batch_size', BATCH_SIZE, 'Rows (prompts x samples) decoded per compiled generation; '
                       'the samples do not depend on it.')
  flags.DEFINE_enum('format', 'text', ['text', 'jsonl'], 'text: each sample as prompt + continuation, '
                    'under a "--- prompt P, sample S" line when there are several; jsonl: one JSON object '
                    'per sample (prompt_index, sample_index, prompt, continuation).')
  flags.DEFINE_string('stop', '', 'Stop a sample at this text (e.g. "\\n"); it is not printed.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to load (default: the latest).')
  flags.DEFINE_bool('continuation_only', False, 'Print only the generated text, not the prompt before it.')
  flags.DEFINE_bool('progress', True, 'Show a progress bar on stderr (where it is a terminal) when the '
                    'samples take more than one batch.')
  cli.define_common()
  cpu.define_flag()

  def run(argv):
    cli.no_extra_arguments(argv)
    f = flags.FLAGS
    if not f.workdir:
      raise GptjaxError('--workdir is required: the run directory to sample from')
    if f.prompts_file is not None and f['prompt'].present:
      raise GptjaxError('give --prompt=TEXT or --prompts_file=FILE, not both')
    if f.prompts_file is not None:
      prompts = read_prompts(f.prompts_file, cli.unescape)
      where = lambda i: f'line {i + 1} of {f.prompts_file}'
    else:
      prompts = [cli.unescape(f.prompt)]
      if not prompts[0]:
        raise GptjaxError('the prompt is empty; give at least one character with --prompt')
      where = lambda i: 'the prompt'
    rows = len(prompts) * max(f.num_samples, 1)
    # Before JAX starts: one XLA CPU device per core where a call's rows split over them, so that
    # decode.generate runs groups of rows side by side (quietly: stdout is the samples).
    cpu.configure(batch_size=min(rows, max(f.batch_size, 1)), auto=f.cpu_auto, log=lambda line: None)
    params, model_config, tokenizer = _load_causal_run(f.workdir, f.step)
    samples = generate_texts(
        params, model_config, tokenizer, prompts, max_new_tokens=f.max_new_tokens, temperature=f.temperature,
        top_k=f.top_k, top_p=f.top_p, seed=f.seed, num_samples=f.num_samples, stop=cli.unescape(f.stop),
        batch_size=f.batch_size, where=where)
    # A bar on stderr where it is a terminal and there is more than one batch; samples go to stdout
    # through the bar's write, which keeps the two apart on a shared terminal.
    batches = -(-rows // f.batch_size)
    with tqdm(total=rows, unit='sample', desc='sample', leave=False, dynamic_ncols=True,
              disable=True if not f.progress or batches <= 1 else None) as bar:
      for s in samples:
        if f.format == 'jsonl':
          lines = [s.to_json()]
        else:
          lines = [s.text if f.continuation_only else s.prompt + s.text]
          if len(prompts) > 1:
            lines.insert(0, f'--- prompt {s.prompt_index}, sample {s.sample_index}' if f.num_samples > 1 else
                         f'--- prompt {s.prompt_index}')
          elif f.num_samples > 1:
            lines.insert(0, f'--- sample {s.sample_index}')
        bar.write('\n'.join(lines), file=sys.stdout)
        sys.stdout.flush()
        bar.update(1)

  cli.run(run)


if __name__ == '__main__':
  main()
