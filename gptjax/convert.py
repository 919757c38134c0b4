"""GPT-2 checkpoints in and out of Hugging Face's format, as gptjax run directories.

    python -m gptjax.convert --from_hf=DIR --workdir=OUT    HF GPT-2 dir -> a run directory
    python -m gptjax.convert --to_hf=DIR --workdir=RUN      a run's checkpoint -> HF GPT-2 dir

A converted run directory is an ordinary one: config.json, tokenizer.json (GPT-2's tokenizer, read
from DIR or --tokenizer_dir), checkpoints/0/ (the weights, with a fresh optimizer state) and
converted_from.json (where they came from); `gptjax.sample` and `gptjax.evaluate` read it, and
`--config.train.init_from=OUT` fine-tunes from it. The export writes config.json + model.safetensors
(+ the tokenizer's files for BPE tokenizers) that transformers' `from_pretrained` loads. Neither
direction overwrites anything: the output must not exist or be empty, and it appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp

from gptjax import checkpoint as ckpt_lib
from gptjax import config as config_lib
from gptjax import data as data_lib
from gptjax import hf, pretrained
from gptjax.errors import GptjaxError


def _check_free(path: str, what: str) -> None:
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise GptjaxError(f'{what} {path} already exists and is not empty; give a new directory '
                      '(nothing was written)')


class _Staging:
  """A temporary directory beside `path` that becomes `path` on success and is removed otherwise."""

  def __init__(self, path: str):
    self.path = os.path.abspath(path)

  def __enter__(self) -> str:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self.tmp = tempfile.mkdtemp(dir=os.path.dirname(self.path), prefix=f'.{os.path.basename(self.path)}.tmp')
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(self.tmp, 0o777 & ~umask)  # as os.makedirs would make it (mkdtemp makes it private)
    return self.tmp

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      if os.path.isdir(self.path):
        os.rmdir(self.path)  # empty (checked before): rename cannot replace a directory otherwise
      os.replace(self.tmp, self.path)
    else:
      shutil.rmtree(self.tmp, ignore_errors=True)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 24), b''):
      digest.update(block)
  return digest.hexdigest()


def from_hf(hf_dir: str, workdir: str, *, tokenizer_dir: str = '', vocab_size: int = 0) -> str:
  """Makes run directory `workdir` from a Hugging Face GPT-2 directory; returns a one-line summary.

  vocab_size pads the vocabulary (0: the checkpoint's); see `pretrained.fit` for how.
  """
  from gptjax import train as train_lib  # the run's state has the structure the training code gives it

  _check_free(workdir, 'workdir')
  source, params = hf.read(hf_dir)
  tokenizer_dir = os.path.abspath(tokenizer_dir or hf_dir)
  if not any(os.path.isfile(os.path.join(tokenizer_dir, n)) for n in ('tokenizer.json', 'vocab.json')):
    raise GptjaxError(f'no GPT-2 tokenizer in {tokenizer_dir}: put its vocab.json and merges.txt (or '
                      'tokenizer.json) there, or pass --tokenizer_dir=DIR where they are')
  tokenizer = data_lib.BPETokenizer.from_files(tokenizer_dir)
  if tokenizer.vocab_size > source.vocab_size:
    raise GptjaxError(f'the tokenizer in {tokenizer_dir} has {tokenizer.vocab_size} ids, more than the '
                      f'{source.vocab_size} rows of {hf_dir}; they do not belong together')
  if vocab_size and vocab_size < source.vocab_size:
    raise GptjaxError(f'--vocab_size={vocab_size} is smaller than the checkpoint\'s {source.vocab_size} rows; '
                      'give 0 (keep them) or more (padding)')
  config = config_lib.get_config()
  model = dict(source.__dict__, vocab_size=vocab_size or source.vocab_size)
  for name, value in model.items():
    config.model[name] = value
  config.data.tokenizer = 'gpt2'
  config.data.tokenizer_path = tokenizer_dir
  config = config_lib.resolve(config)
  model_config = config_lib.model_config(config, tokenizer.vocab_size)
  params = pretrained.fit(params, source, model_config)
  tx, _ = train_lib.make_optimizer(config.train)
  rng = jax.random.split(jax.random.PRNGKey(config.seed))[1]  # the dropout key init_state draws
  state = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)
  with _Staging(workdir) as tmp:
    train_lib.save_run_files(tmp, config, model_config, tokenizer)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(tmp, 'checkpoints'))
    checkpointer.save(0, state)
    checkpointer.close()
    weights = [n for n in (hf.WEIGHTS, hf.INDEX) if os.path.isfile(os.path.join(hf_dir, n))]
    record = {'from_hf': os.path.abspath(hf_dir), 'tokenizer_dir': tokenizer_dir,
              'files_sha256': {n: _sha256(os.path.join(hf_dir, n)) for n in ['config.json'] + weights}}
    data_lib.atomic_write(os.path.join(tmp, 'converted_from.json'), json.dumps(record, indent=1))
  return (f'wrote {workdir}: GPT-2 with {model_config.n_layer} layers, {model_config.n_head} heads, '
          f'{model_config.n_embd} wide, {model_config.block_size} positions, vocab {model_config.vocab_size}; '
          f'tokenizer from {tokenizer_dir} ({tokenizer.vocab_size} ids)')


def to_hf(workdir: str, hf_dir: str, *, step: int | None = None) -> str:
  """Writes the checkpoint of run `workdir` (default: latest) as a Hugging Face GPT-2 directory."""
  from gptjax.run import load_run  # a run's checkpoint is read the way sampling reads it

  _check_free(hf_dir, 'output directory')
  params, model_config, tokenizer, step = load_run(workdir, step)
  hf.check_exportable(model_config)
  bpe = isinstance(tokenizer, data_lib.BPETokenizer)
  eot = tokenizer.token_id(data_lib.END_OF_TEXT) if bpe else None
  with _Staging(hf_dir) as tmp:
    hf.write(tmp, jax.device_get(params), model_config, vocab_size=tokenizer.vocab_size, eot_id=eot)
    if bpe:
      data_lib.atomic_write(os.path.join(tmp, 'tokenizer.json'), tokenizer.to_json())
      tokenizer.save_vocab_merges(tmp)
      special = {} if eot is None else {'bos_token': data_lib.END_OF_TEXT, 'eos_token': data_lib.END_OF_TEXT,
                                        'unk_token': data_lib.END_OF_TEXT}
      data_lib.atomic_write(os.path.join(tmp, 'tokenizer_config.json'), json.dumps(
          {'tokenizer_class': 'GPT2Tokenizer', 'add_prefix_space': False,
           'model_max_length': model_config.block_size, **special}, indent=2))
  note = (f'tokenizer: {tokenizer.kind}, {tokenizer.vocab_size} ids' if bpe else
          f'no tokenizer files: transformers has no {tokenizer.kind}-level tokenizer; ids are the '
          f"{'UTF-8 bytes' if tokenizer.kind == 'byte' else 'characters of tokenizer.json'} of {workdir}")
  return (f'wrote {hf_dir}: step {step} of {workdir} as GPT-2 ({model_config.n_layer} layers, vocab '
          f'{tokenizer.vocab_size}); {note}')


def main():
  """python -m gptjax.convert (--from_hf=DIR | --to_hf=DIR) --workdir=RUN [...]"""
  from absl import flags

  from gptjax import cli

  flags.DEFINE_string('from_hf', None, 'A Hugging Face GPT-2 directory (config.json + model.safetensors) to '
                      'make run directory --workdir from.')
  flags.DEFINE_string('to_hf', None, 'A new directory to write the checkpoint of run --workdir into, in '
                      "Hugging Face GPT-2's format.")
  flags.DEFINE_string('workdir', None, 'The run directory: made by --from_hf, read by --to_hf.')
  flags.DEFINE_string('tokenizer_dir', '', 'With --from_hf: where vocab.json + merges.txt (or tokenizer.json) '
                      'are, if not in the --from_hf directory.')
  flags.DEFINE_integer('vocab_size', 0, 'With --from_hf: pad the vocabulary to this many rows (0: as is).')
  flags.DEFINE_integer('step', None, 'With --to_hf: the checkpoint step to export (default: the latest).')
  cli.define_common()

  def run(argv):
    cli.no_extra_arguments(argv)
    f = flags.FLAGS
    if bool(f.from_hf) == bool(f.to_hf):
      raise GptjaxError('give one of --from_hf=DIR (import a Hugging Face GPT-2) or --to_hf=DIR (export a run)')
    if not f.workdir:
      raise GptjaxError('--workdir is required: the run directory to make (--from_hf) or to export (--to_hf)')
    if f.from_hf:
      print(from_hf(f.from_hf, f.workdir, tokenizer_dir=f.tokenizer_dir, vocab_size=f.vocab_size))
    else:
      print(to_hf(f.workdir, f.to_hf, step=f.step))

  cli.run(run)


if __name__ == '__main__':
  main()
