"""gptjax.convert (GPT-2 directories in and out of run directories) and train.init_from, end to end."""

import dataclasses
import functools
import json
import math
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from gptjax import checkpoint as ckpt_lib
from gptjax import config as config_lib
from gptjax import data as data_lib
from gptjax import convert, hf, objectives, pretrained, train
from gptjax.errors import GptjaxError
from gptjax.metrics import read_jsonl
from gptjax.model import GPT, GPTConfig
from test_bad_input import assert_one_line_error, cli
from test_reliability import tree_digest

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'tiny-gpt2')
CORPUS = ('The cat sat on the mat. 你是一只猫。 The cat is a cat, and the mat is a mat. 🐱\n') * 60
# Two float32 computations of the same loss (the pmapped training program and a direct forward pass)
# differ by rounding: ~1e-7 relative per operation, a mean over 2 x 4 x 16 targets of values ~6.
LOSS_RTOL = 1e-5
# One AdamW step from a fresh state moves each parameter by about lr * g / |g| = lr = 1e-3; gradients
# that differ in their last float32 bits change that by far less than 1e-6.
STATE_ATOL = 1e-6


def expected():
  with open(os.path.join(FIXTURE, 'expected.json'), encoding='utf-8') as f:
    return json.load(f)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """The fixture converted by the command line into a run directory."""
  workdir = str(tmp_path_factory.mktemp('convert') / 'run')
  proc = cli('gptjax.convert', f'--from_hf={FIXTURE}', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr
  return workdir, proc


def test_convert_makes_a_run_directory_that_samples_transformers_greedy_text(converted):
  workdir, proc = converted
  assert proc.stdout.startswith(f'wrote {workdir}: GPT-2 with 2 layers, 4 heads, 64 wide')
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    run_config = json.load(f)
  assert GPTConfig(**run_config['model']) == hf.read_config(FIXTURE)
  assert run_config['data']['tokenizer'] == 'gpt2' and run_config['data']['tokenizer_path'] == FIXTURE
  assert data_lib.load_tokenizer(os.path.join(workdir, 'tokenizer.json')).kind == 'gpt2'
  with open(os.path.join(workdir, 'converted_from.json'), encoding='utf-8') as f:
    record = json.load(f)
  assert record['from_hf'] == FIXTURE and len(record['files_sha256']['model.safetensors']) == 64
  exp = expected()
  sample = cli('gptjax.sample', f'--workdir={workdir}', f"--prompt={exp['prompt_text']}", '--temperature=0',
               f"--max_new_tokens={len(exp['greedy_ids'])}")
  assert sample.returncode == 0, sample.stderr
  # The prompt, then transformers' greedy ids decoded by transformers.
  assert sample.stdout == exp['prompt_text'] + exp['greedy_text'] + '\n'


def test_export_cli_gives_back_the_fixture(converted, tmp_path):
  workdir, _ = converted
  out = tmp_path / 'hf'
  proc = cli('gptjax.convert', f'--to_hf={out}', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr
  assert 'wrote' in proc.stdout and 'tokenizer: gpt2, 320 ids' in proc.stdout
  ours, theirs = load_file(str(out / 'model.safetensors')), load_file(os.path.join(FIXTURE, 'model.safetensors'))
  assert sorted(ours) == sorted(theirs)
  for name in theirs:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
  assert hf.read_config(str(out)) == hf.read_config(FIXTURE)
  tokenizer = data_lib.BPETokenizer.from_files(str(out))
  for case in expected()['tokenizer_cases']:
    assert tokenizer.encode(case['text']).tolist() == case['ids']
  with open(out / 'config.json', encoding='utf-8') as f:
    assert json.load(f)['eos_token_id'] == 319  # <|endoftext|>, for transformers' generate


def test_a_padded_vocabulary_goes_in_and_comes_out_cut(tmp_path):
  """--vocab_size pads the converted run (mean rows); the export cuts back to the tokenizer's 320 ids."""
  convert.from_hf(FIXTURE, str(tmp_path / 'run'), vocab_size=384)
  from gptjax import sample
  params, config, tokenizer, step = sample.load_run(str(tmp_path / 'run'))
  assert (config.vocab_size, tokenizer.vocab_size, step) == (384, 320, 0)
  assert params['wte']['embedding'].shape == (384, 64)
  convert.to_hf(str(tmp_path / 'run'), str(tmp_path / 'hf'))
  ours = load_file(str(tmp_path / 'hf' / 'model.safetensors'))
  theirs = load_file(os.path.join(FIXTURE, 'model.safetensors'))
  assert sorted(ours) == sorted(theirs)
  for name in theirs:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def run_dir(path, config: GPTConfig):
  """A run directory with an untrained checkpoint of `config` (byte tokenizer), made without training."""
  run_config = config_lib.get_config()
  run_config.model.update(config.__dict__)
  tx, _ = train.make_optimizer(run_config.train)
  train.save_run_files(str(path), run_config, config, data_lib.ByteTokenizer())
  checkpointer = ckpt_lib.Checkpointer(str(path / 'checkpoints'))
  checkpointer.save(0, train.init_state(config, tx, 0))
  checkpointer.close()
  return str(path)


def test_convert_cli_errors_are_one_line_and_write_nothing(converted, tmp_path):
  workdir, _ = converted
  before = tree_digest(workdir)
  proc = cli('gptjax.convert', f'--from_hf={FIXTURE}', f'--workdir={workdir}')
  assert_one_line_error(proc, f'workdir {workdir} already exists and is not empty')
  assert tree_digest(workdir) == before

  pickled = tmp_path / 'pickled'
  pickled.mkdir()
  (pickled / 'config.json').write_text(open(os.path.join(FIXTURE, 'config.json')).read())
  (pickled / 'pytorch_model.bin').write_bytes(b'a pickle')
  proc = cli('gptjax.convert', f'--from_hf={pickled}', f'--workdir={tmp_path}/out')
  assert_one_line_error(proc, 'only PyTorch weights (pytorch_model.bin)', 'convert them to safetensors')

  bare = tmp_path / 'bare'  # weights without the tokenizer's files
  bare.mkdir()
  for name in ('config.json', 'model.safetensors'):
    os.link(os.path.join(FIXTURE, name), bare / name)
  proc = cli('gptjax.convert', f'--from_hf={bare}', f'--workdir={tmp_path}/out')
  assert_one_line_error(proc, f'no GPT-2 tokenizer in {bare}', 'vocab.json and merges.txt', '--tokenizer_dir')
  assert not os.path.exists(tmp_path / 'out')

  sinusoidal = run_dir(tmp_path / 'sinusoidal', GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2,
                                                          n_embd=16, pos_encoding='sinusoidal', head_bias=False))
  proc = cli('gptjax.convert', f'--to_hf={tmp_path}/out', f'--workdir={sinusoidal}')
  assert_one_line_error(proc, "GPT-2's format cannot hold this model", "pos_encoding='sinusoidal'")
  with pytest.raises(GptjaxError, match=f'output directory {FIXTURE} already exists and is not empty'):
    convert.to_hf(workdir, FIXTURE)  # in-process: the command line's path is the same as above
  proc = cli('gptjax.convert', f'--workdir={workdir}')
  assert_one_line_error(proc, 'give one of --from_hf=DIR')
  assert not os.path.exists(tmp_path / 'out')


# ---------------------------------------------------------------------------------------------
# init_from


def finetune_config(tmp_path, init_from, **overrides):
  """The default config pointed at a small text, GPT-2's tokenizer and init_from; one step, 1 device."""
  path = tmp_path / 'corpus.txt'
  path.write_text(CORPUS, encoding='utf-8')
  config = config_lib.get_config()
  config.data.update(path=str(path), tokenizer='gpt2', tokenizer_path=FIXTURE)
  config.model.update(block_size=32)  # the fixture has 64 positions: the table is cut to 32
  config.train.update(init_from=init_from, seq_len=16, batch_size=4, max_steps=1, steps_per_call=1,
                      log_interval=1, eval_interval=1, eval_iters=2, checkpoint_interval=1, devices=1,
                      warmup_steps=0)
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def restore(workdir, step, config):
  """The train state of `workdir` at `step` (params, Adam moments, step counter)."""
  config = config_lib.resolve(config)
  model_config = pretrained.model_config(config.train.init_from, config,
                                         data_lib.load_tokenizer(os.path.join(workdir, 'tokenizer.json')))
  tx, _ = train.make_optimizer(config.train)
  like = jax.eval_shape(lambda: train.init_state(model_config, tx, config.seed))
  return ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), create=False).restore(step, like), tx


def first_step_by_hand(workdir, config, params):
  """The step-0 validation loss and the state after step 1, computed directly from `params` with a
  fresh optimizer (no pmap, no init_from code): what the run must have done."""
  config = config_lib.resolve(config)
  model_config = GPTConfig(**{**hf.read_config(FIXTURE).__dict__, 'block_size': 32})
  model = GPT(model_config)
  tc = config.train
  ids = {s: data_lib.load_split(os.path.join(workdir, 'data'), s) for s in ('train', 'val')}
  batch = lambda split, step, stream: data_lib.batch_at(
      ids[split], seed=config.seed, step=step, batch_size=tc.batch_size, seq_len=tc.seq_len, stream=stream)
  losses = [objectives.cross_entropy(model.apply({'params': params}, b[:, :-1]), b[:, 1:])[0]
            for b in (batch('val', s, data_lib.EVAL_STREAM) for s in range(tc.eval_iters))]
  tx, _ = train.make_optimizer(tc)
  state = train.TrainState(step=np.int32(0), params=params, opt_state=tx.init(params),
                           rng=jax.random.split(jax.random.PRNGKey(config.seed))[1])
  step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, axis_name=None))
  state, _ = step(state, batch('train', 0, data_lib.TRAIN_STREAM))
  return float(np.mean(losses)), state


def assert_state_close(a, b):
  assert int(a.step) == int(b.step)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=0, atol=STATE_ATOL),
               jax.device_get(a.params), jax.device_get(b.params))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=0, atol=STATE_ATOL),
               jax.device_get(a.opt_state), jax.device_get(b.opt_state))


@pytest.mark.parametrize('source', ['converted run', 'hf directory'])
def test_init_from_starts_from_exactly_the_pretrained_parameters(source, converted, tmp_path):
  init_from = converted[0] if source == 'converted run' else FIXTURE
  config = finetune_config(tmp_path, init_from)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir, progress=False)
  _, fixture_params = hf.read(FIXTURE)
  fixture_params['wpe']['embedding'] = fixture_params['wpe']['embedding'][:32]  # block_size 32 of 64
  val_loss, state = first_step_by_hand(workdir, config, fixture_params)
  metrics = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert metrics[0]['step'] == 0
  np.testing.assert_allclose(metrics[0]['val_loss'], val_loss, rtol=LOSS_RTOL)
  saved, _ = restore(workdir, 1, config)
  assert_state_close(saved, state)  # step 1, Adam moments of one step: the optimizer started fresh
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['model']['n_embd'] == 64  # the shape came from the pretrained model


def test_init_from_a_trained_run_takes_its_parameters_only(converted, tmp_path):
  """From a run at step 1 (Adam moments not zero): the new run starts at step 0 with a fresh optimizer."""
  first = finetune_config(tmp_path, converted[0])
  train.train_and_evaluate(first, str(tmp_path / 'first'), progress=False)
  trained, _ = restore(str(tmp_path / 'first'), 1, first)
  assert int(trained.opt_state[1][0].count) == 1  # what must not be carried over
  config = finetune_config(tmp_path, str(tmp_path / 'first'))
  workdir = str(tmp_path / 'second')
  train.train_and_evaluate(config, workdir, progress=False)
  val_loss, state = first_step_by_hand(workdir, config, jax.device_get(trained.params))
  metrics = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  np.testing.assert_allclose(metrics[0]['val_loss'], val_loss, rtol=LOSS_RTOL)
  first_last = read_jsonl(os.path.join(tmp_path / 'first', 'metrics.jsonl'))[-1]
  np.testing.assert_allclose(metrics[0]['val_loss'], first_last['val_loss'], rtol=LOSS_RTOL)  # same batches
  assert_state_close(restore(workdir, 1, config)[0], state)


def test_padding_the_vocabulary_costs_at_most_log_1_plus_k_over_n(tmp_path):
  """New rows are the mean row: the loss on real tokens rises, by at most log(1 + k/n) (pretrained.py)."""
  source, params = hf.read(FIXTURE)
  padded_config = dataclasses.replace(source, vocab_size=384)
  padded = pretrained.fit(params, source, padded_config)
  wte = padded['wte']['embedding']
  np.testing.assert_array_equal(wte[:320], params['wte']['embedding'])
  np.testing.assert_allclose(wte[320:], np.broadcast_to(params['wte']['embedding'].mean(0), (64, 64)), rtol=1e-6)
  ids = np.asarray([expected()['logits_ids']], np.int32)
  loss = lambda config, p: float(objectives.cross_entropy(GPT(config).apply({'params': p}, ids[:, :-1]),
                                                          ids[:, 1:])[0])
  before, after = loss(source, params), loss(padded_config, padded)
  assert before < after <= before + math.log(1 + 64 / 320)


@pytest.mark.parametrize('overrides, words', [
    ({'model.n_embd': 48}, ['train.init_from gives the model its shape', 'model.n_embd=48', 'has 64']),
    ({'model.block_size': 128}, ['model.block_size=128 is larger than the 64 positions']),
    ({'data.tokenizer': 'byte'}, ['trained with another tokenizer (gpt2, 320 ids)', '(byte, 256 ids)']),
    ({'train.init_from': '/nonexistent'}, ['train.init_from=/nonexistent is not a directory']),
], ids=['shape', 'positions', 'tokenizer', 'missing'])
def test_init_from_refuses_what_cannot_apply(tmp_path, overrides, words):
  config = finetune_config(tmp_path, FIXTURE, **overrides)
  with pytest.raises(GptjaxError) as e:
    train.train_and_evaluate(config, str(tmp_path / 'run'), progress=False)
  assert '\n' not in str(e.value)
  for w in words:
    assert w in str(e.value), (w, str(e.value))
  assert not os.path.exists(tmp_path / 'run')


def test_the_finetune_shakespeare_recipe_runs_on_the_fixture(tmp_path):
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'finetune', os.path.join(os.path.dirname(FIXTURE), '..', '..', 'configs', 'finetune_shakespeare.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert (config.train.learning_rate, config.train.min_lr, config.data.tokenizer) == (3e-5, 3e-5, 'gpt2')
  (tmp_path / 'corpus.txt').write_text(CORPUS, encoding='utf-8')
  config.data.update(path=str(tmp_path / 'corpus.txt'), tokenizer_path=FIXTURE)
  config.model.block_size = 32
  config.train.update(init_from=FIXTURE, seq_len=16, batch_size=4, max_steps=5, eval_iters=2, devices=1)
  result = train.train_and_evaluate(config, str(tmp_path / 'run'), progress=False)
  first = read_jsonl(str(tmp_path / 'run' / 'metrics.jsonl'))[0]
  assert result['step'] == 5 and result['lr'] == pytest.approx(3e-5)  # constant, as nanoGPT's decay_lr=False
  assert result['val_loss'] < first['val_loss']  # 5 steps on the same text lower its loss
