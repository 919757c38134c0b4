"""Every bad input gets one line `error: ...` (exit status 2, no traceback) and changes nothing in
an existing workdir."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from test_reliability import in_mount_namespace, tree_digest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'tiny.py')
POEM = ('The quick brown fox jumps over the lazy dog.\n'
        'Pack my box with five dozen liquor jugs!\n') * 40


def cli(module, *args, env=None):
  return subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True,
                        cwd=ROOT, env={**os.environ, 'XLA_FLAGS': '', **(env or {})}, timeout=300)


def assert_one_line_error(proc, *words):
  err = proc.stderr.strip()
  assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
  assert len(err.splitlines()) == 1 and err.startswith('error: '), err
  assert 'Traceback' not in proc.stderr
  for w in words:
    assert w in err, (w, err)


@pytest.fixture(scope='module')
def byte_run(tmp_path_factory):
  """A finished tiny byte-level run: the existing workdir that bad runs must leave alone."""
  workdir = str(tmp_path_factory.mktemp('bad') / 'byte')
  proc = cli('gptjax.train', f'--config={TINY}', f'--workdir={workdir}', '--config.train.max_steps=10',
             '--config.train.checkpoint_interval=10', '--noprogress')
  assert proc.returncode == 0, proc.stderr
  return workdir


@pytest.fixture(scope='module')
def char_run(tmp_path_factory):
  """A finished tiny char-level run on a small text (for the sampling errors)."""
  base = tmp_path_factory.mktemp('bad')
  (base / 'poem.txt').write_text(POEM)
  workdir = str(base / 'char')
  proc = cli('gptjax.train', f'--config={TINY}', f'--workdir={workdir}', '--config.train.max_steps=10',
             '--config.train.checkpoint_interval=10', f'--config.data.path={base / "poem.txt"}',
             '--config.data.tokenizer=char', '--noprogress')
  assert proc.returncode == 0, proc.stderr
  return workdir


def bad_file(tmp_path, kind):
  path = tmp_path / f'{kind}.txt'
  if kind == 'empty':
    path.write_bytes(b'')
  elif kind == 'latin1':
    path.write_bytes('café crème brûlée\n'.encode('latin-1') * 10)
  elif kind == 'short':
    path.write_text('tiny text')  # 9 bytes: the val split cannot hold a window of 33 tokens
  return str(path)


TRAIN_CASES = {
    'unknown field': (['--config.model.n_layr=3'], ['unknown config field --config.model.n_layr',
                                                     "did you mean 'n_layer'"]),
    'wrong type': (['--config.model.n_layer=abc'], ['--config.model.n_layer=abc', 'invalid literal']),
    'heads do not divide width': (['--config.model.n_head=3'], ['n_embd=32 is not divisible by n_head=3']),
    'seq_len beyond positions': (['--config.train.seq_len=64'],
                                 ['train.seq_len=64 is larger than the 32 positions', 'model.block_size']),
    'missing data file': (['--config.data.path=/nonexistent/corpus.txt'],
                          ['/nonexistent/corpus.txt does not exist']),
    'empty data file': ('empty', ['empty.txt is empty']),
    'not utf-8 for char': ('latin1', ['latin1.txt is not UTF-8', '--config.data.tokenizer=byte']),
    'shorter than a window': ('short', ['fewer than train.seq_len + 1 = 33']),
    'different model shape': (['--config.model.n_layer=3'],
                              ['holds a run with a different setup', 'model.n_layer=2 (config asks 3)',
                               'new --workdir']),
    'different tokenizer': (['--config.data.tokenizer=char'], ['tokenizer (byte, 256 ids; this data gives char']),
    'unknown tokenizer': (['--config.data.tokenizer=nonesuch'], ["data.tokenizer='nonesuch' must be"]),
    'stray argument': (['extra'], ['unexpected arguments']),
    'missing config file': (['--config=configs/nope.py'], ['config file', 'does not exist']),
}


@pytest.mark.parametrize('case', sorted(TRAIN_CASES))
def test_bad_train_input(case, byte_run, tmp_path):
  args, words = TRAIN_CASES[case]
  if isinstance(args, str):  # a bad data file of that kind
    args = [f'--config.data.path={bad_file(tmp_path, args)}', '--config.data.tokenizer=char']
  config = [] if any(a.startswith('--config=') for a in args) else [f'--config={TINY}']
  before = tree_digest(byte_run)
  proc = cli('gptjax.train', *config, f'--workdir={byte_run}', *args, '--noprogress')
  assert_one_line_error(proc, *words)
  assert tree_digest(byte_run) == before


def test_batch_not_divisible_by_devices(byte_run):
  before = tree_digest(byte_run)
  proc = cli('gptjax.train', f'--config={TINY}', f'--workdir={byte_run}', '--config.train.batch_size=12',
             env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert_one_line_error(proc, 'train.batch_size=12 is not divisible by the 8 devices')
  assert tree_digest(byte_run) == before


def test_debug_flag_shows_the_traceback(byte_run):
  proc = cli('gptjax.train', f'--config={TINY}', f'--workdir={byte_run}', '--config.model.n_layer=3',
             '--debug')
  assert proc.returncode != 0 and 'Traceback' in proc.stderr
  assert proc.stderr.rstrip().splitlines()[-1].startswith(f'gptjax.errors.GptjaxError: workdir {byte_run} holds a run')


SAMPLE_CASES = {
    'character outside the vocabulary': (['--prompt=The ✓ fox'], ["not in the tokenizer vocabulary: '✓'"]),
    'empty prompt': (['--prompt='], ['the prompt is empty']),
    'negative temperature': (['--temperature=-0.5'], ['temperature=-0.5 must be']),
    'negative top_k': (['--top_k=-1'], ['top_k=-1 must be an integer between 0']),
    'top_k beyond vocabulary': (['--top_k=1000'], ['top_k=1000', 'vocabulary size']),
    'top_p zero': (['--top_p=0'], ['top_p=0.0 must be in (0, 1]']),
    'top_p above one': (['--top_p=1.5'], ['top_p=1.5 must be in (0, 1]']),
    'zero new tokens': (['--max_new_tokens=0'], ['max_new_tokens=0']),
}


@pytest.mark.parametrize('case', sorted(SAMPLE_CASES))
def test_bad_sample_input(case, char_run):
  args, words = SAMPLE_CASES[case]
  if not any(a.startswith('--prompt') for a in args):
    args = ['--prompt=The', '--max_new_tokens=10'] + args
  before = tree_digest(char_run)
  proc = cli('gptjax.sample', f'--workdir={char_run}', *args)
  assert_one_line_error(proc, *words)
  assert tree_digest(char_run) == before


def test_sample_from_a_workdir_without_checkpoint(tmp_path):
  proc = cli('gptjax.sample', f'--workdir={tmp_path}', '--prompt=hi')
  assert_one_line_error(proc, 'is not a run directory')
  assert os.listdir(tmp_path) == []
  (tmp_path / 'config.json').write_text('{}')
  (tmp_path / 'tokenizer.json').write_text('{"kind": "byte"}')
  proc = cli('gptjax.sample', f'--workdir={tmp_path}', '--prompt=hi')
  assert_one_line_error(proc, 'has no checkpoint yet')


def test_sample_reads_a_good_prompt(char_run):
  proc = cli('gptjax.sample', f'--workdir={char_run}', '--prompt=The quick', '--max_new_tokens=8',
             '--temperature=0')
  assert proc.returncode == 0, proc.stderr
  text = proc.stdout[:-1]  # print's newline
  assert proc.stdout.endswith('\n') and text.startswith('The quick') and len(text) == 9 + 8  # char: 1 per token
  assert set(text) <= set(POEM)  # every generated character is one of the training text's


def test_sample_goes_past_the_context_when_asked(char_run):
  """--max_new_tokens beyond the model's 32 positions slides the window: all 40 characters come out."""
  proc = cli('gptjax.sample', f'--workdir={char_run}', '--prompt=The', '--max_new_tokens=40', '--temperature=0',
             '--continuation_only')
  assert proc.returncode == 0, proc.stderr
  assert len(proc.stdout) == 40 + 1  # char tokenizer: one character per token, plus print's newline


def test_sample_fills_the_context_by_default(char_run):
  """Without --max_new_tokens a sample runs to the end of the model's 32 positions (never past them)."""
  proc = cli('gptjax.sample', f'--workdir={char_run}', '--prompt=The', '--temperature=0')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith('The') and len(proc.stdout) == 32 + 1  # prompt + 29 new characters + newline
  alone = cli('gptjax.sample', f'--workdir={char_run}', '--prompt=The', '--temperature=0', '--continuation_only')
  assert alone.stdout == proc.stdout[3:]
  full = cli('gptjax.sample', f'--workdir={char_run}', '--prompt=' + 'The fox ' * 4)  # 32 characters
  assert_one_line_error(full, 'the prompt (32 tokens) fills the 32 positions')


PROMPTS = ['The\\nfox', 'Pack my', 'The quick brown fox jumps over']  # as written in the file: \\n escaped


def prompts_file(tmp_path, lines=PROMPTS):
  path = tmp_path / 'prompts.txt'
  path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
  return str(path)


def jsonl(proc):
  assert proc.returncode == 0, proc.stderr
  return [json.loads(line) for line in proc.stdout.splitlines()]


def test_sample_prompts_file_continues_each_line_as_it_would_alone(char_run, tmp_path):
  """Three prompts of 7, 7 and 30 characters (the first with an escaped newline), two per compiled
  call, greedy, no --max_new_tokens: each line's continuation is the one --prompt gives for it alone,
  and it fills that prompt's own context (32 positions less its length)."""
  from gptjax import sample as sample_lib
  proc = cli('gptjax.sample', f'--workdir={char_run}', f'--prompts_file={prompts_file(tmp_path)}',
             '--temperature=0', '--batch_size=2', '--format=jsonl')
  records = jsonl(proc)
  prompts = ['The\nfox', 'Pack my', 'The quick brown fox jumps over']
  assert [(r['prompt_index'], r['sample_index'], r['prompt']) for r in records] == [
      (i, 0, p) for i, p in enumerate(prompts)]
  for r, prompt in zip(records, prompts):
    [alone] = sample_lib.sample_from_workdir(char_run, prompt, temperature=0.0)
    assert r['continuation'] == alone and len(alone) == 32 - len(prompt)


def test_sample_prompts_file_samples_do_not_depend_on_the_batch_size(char_run, tmp_path):
  """Sampled (temperature 1, seed 5), two samples of each of three prompts: one row per compiled call
  and all six in one call print the same; prompt 0's samples are those of --prompt with the same seed
  (rows 0 and 1 of the request draw from the same keys either way)."""
  from gptjax import sample as sample_lib
  args = ('gptjax.sample', f'--workdir={char_run}', f'--prompts_file={prompts_file(tmp_path)}', '--temperature=1',
          '--seed=5', '--num_samples=2', '--max_new_tokens=12', '--format=jsonl')
  one_by_one, together = jsonl(cli(*args, '--batch_size=1')), jsonl(cli(*args, '--batch_size=6'))
  assert one_by_one == together and len(together) == 6
  assert len({r['continuation'] for r in together}) > 1  # seeded draws, not one text six times
  alone = sample_lib.sample_from_workdir(char_run, 'The\nfox', temperature=1.0, seed=5, num_samples=2,
                                         max_new_tokens=12)
  assert [r['continuation'] for r in together[:2]] == alone


def test_sample_stop_text_cuts_each_continuation_where_it_first_appears(char_run, tmp_path):
  """--stop of one character (one token: the loop's stop token) and of two (a stop sequence the loop
  looks for), both taken from the greedy output itself: each continuation is the unstopped one cut
  before the stop text's first appearance."""
  args = ('gptjax.sample', f'--workdir={char_run}', f'--prompts_file={prompts_file(tmp_path)}', '--temperature=0',
          '--max_new_tokens=40', '--format=jsonl')
  free = [r['continuation'] for r in jsonl(cli(*args))]
  for stop in (free[0][5], free[0][10:12]):
    cut = [r['continuation'] for r in jsonl(cli(*args, f'--stop={stop}'))]
    assert cut == [text.split(stop, 1)[0] for text in free], stop
    assert len(cut[0]) < 40  # prompt 0's continuation was cut


def test_sample_stops_quietly_when_its_reader_goes_away(char_run, tmp_path):
  """`gptjax.sample ... | head`: stdout's reader closes before the first sample is printed. The
  command ends with the shell's SIGPIPE status (141) and nothing on stderr, no traceback, no error line."""
  proc = subprocess.Popen([sys.executable, '-m', 'gptjax.sample', f'--workdir={char_run}',
                           f'--prompts_file={prompts_file(tmp_path)}', '--max_new_tokens=4', '--batch_size=1'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                          env={**os.environ, 'XLA_FLAGS': ''})
  proc.stdout.close()  # the reader is gone before anything is written
  _, err = proc.communicate(timeout=300)
  assert (proc.returncode, err.decode()) == (141, '')


def test_sample_progress_bar_goes_to_a_terminal_stderr_and_leaves_stdout_alone(char_run, tmp_path):
  """Three prompts, one per batch: with stderr on a terminal (a pty 100 columns wide) a tqdm bar counts
  the samples there, and stdout is byte for byte what it is without a terminal (where no bar shows:
  the quiet-reader test above sees an empty stderr)."""
  import fcntl
  import pty
  import struct
  import termios
  import threading
  args = [sys.executable, '-m', 'gptjax.sample', f'--workdir={char_run}', f'--prompts_file={prompts_file(tmp_path)}',
          '--max_new_tokens=4', '--temperature=0', '--batch_size=1']
  env = {**os.environ, 'XLA_FLAGS': ''}
  plain = subprocess.run(args, capture_output=True, cwd=ROOT, env=env, timeout=300)
  master, slave = pty.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))
  pieces = []

  def read_terminal():
    try:
      while chunk := os.read(master, 65536):
        pieces.append(chunk)
    except OSError:  # the terminal closed with the process
      pass

  reader = threading.Thread(target=read_terminal)
  reader.start()
  proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=env, timeout=300)
  os.close(slave)
  reader.join(timeout=30)
  os.close(master)
  terminal = b''.join(pieces)
  assert proc.returncode == plain.returncode == 0 and proc.stdout == plain.stdout
  assert plain.stdout.decode().count('--- prompt ') == 3 and plain.stderr == b''
  assert b'sample:' in terminal and b'/3 [' in terminal, terminal


PROMPTS_FILE_CASES = {
    'prompt and prompts_file': (['--prompt=The'], PROMPTS, ['give --prompt=TEXT or --prompts_file=FILE, not both']),
    'missing prompts file': ([], None, ['cannot read --prompts_file=', 'No such file']),
    'empty line in prompts file': ([], ['The', '', 'fox'], ['line 2 of', 'is empty']),
    'unknown character on a line': ([], ['The', 'The \u2713 fox'], ['line 2 of', "not in the tokenizer vocabulary: '\u2713'"]),
    'batch_size zero': (['--batch_size=0'], PROMPTS, ['batch_size=0 must be >= 1']),
}


@pytest.mark.parametrize('case', sorted(PROMPTS_FILE_CASES))
def test_bad_prompts_file(case, char_run, tmp_path):
  args, lines, words = PROMPTS_FILE_CASES[case]
  path = prompts_file(tmp_path, lines) if lines is not None else str(tmp_path / 'missing.txt')
  before = tree_digest(char_run)
  proc = cli('gptjax.sample', f'--workdir={char_run}', f'--prompts_file={path}', *args)
  assert_one_line_error(proc, *words)
  assert proc.stdout == ''  # nothing generated before every line is checked
  assert tree_digest(char_run) == before


# ---------------------------------------------------------------------------------------------
# Config files that do not load: one line naming the file, the line and the error


CONFIG_FILES = {
    'syntax error': ('def get_config(:\n  pass\n', ', line 1: SyntaxError: invalid syntax; fix the file'),
    'exception in get_config': ('from gptjax.config import get_config as base\n\ndef get_config():\n  c = base()\n'
                                "  c.train.learning_rate = float('1e-3x')\n  return c\n",
                                ", line 5: ValueError: could not convert string to float: '1e-3x'; fix the file"),
    'no get_config': ('X = 1\n', ' defines no get_config(); a config file defines get_config() returning an '
                                  'ml_collections.ConfigDict'),
    'not a ConfigDict': ('def get_config():\n  return {"model": {}}\n',
                         ': get_config() returned dict, not an ml_collections.ConfigDict'),
    'failing import': ('import gptjax.no_such_module\n', ", line 1: ModuleNotFoundError: No module named "
                                                          "'gptjax.no_such_module'; fix the file"),
}


@pytest.mark.parametrize('case', sorted(CONFIG_FILES))
def test_config_file_that_does_not_load(case, byte_run, tmp_path):
  source, message = CONFIG_FILES[case]
  path = tmp_path / 'broken.py'
  path.write_text(source)
  before = tree_digest(byte_run)
  proc = cli('gptjax.train', f'--config={path}', f'--workdir={byte_run}', '--config.train.max_steps=20')
  assert_one_line_error(proc)
  assert proc.stderr == f'error: config file {path}{message}\n'
  assert tree_digest(byte_run) == before


def test_config_file_error_with_debug_shows_the_traceback(tmp_path):
  path = tmp_path / 'broken.py'
  path.write_text(CONFIG_FILES['exception in get_config'][0])
  proc = cli('gptjax.train', f'--config={path}', f'--workdir={tmp_path}/run', '--debug')
  assert proc.returncode != 0 and 'Traceback' in proc.stderr
  assert f'File "{path}", line 5, in get_config' in proc.stderr


# ---------------------------------------------------------------------------------------------
# The filesystem: one line naming the path and what to do; nothing saved is lost


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'notes.txt').write_text('keep me')
  proc = cli('gptjax.train', f'--config={TINY}', f'--workdir={tmp_path}/notes.txt')
  assert_one_line_error(proc)
  assert proc.stderr == (f'error: workdir {tmp_path}/notes.txt is a file, not a directory; pass --workdir=DIR '
                         'naming a directory (a new one, or the run to resume)\n')
  proc = cli('gptjax.train', f'--config={TINY}', f'--workdir={tmp_path}/notes.txt/run')
  assert proc.stderr == (f'error: cannot create workdir {tmp_path}/notes.txt/run: {tmp_path}/notes.txt is a file, '
                         'not a directory; pass a --workdir whose parents are directories\n')
  assert (tmp_path / 'notes.txt').read_text() == 'keep me'


def test_read_only_workdir_refuses_training_and_still_samples(byte_run, tmp_path):
  """A read-only bind mount of the finished run (a real EROFS, which root cannot write through)."""
  out = tmp_path / 'out'
  env = 'XLA_FLAGS= '
  proc = in_mount_namespace(f"""
    mount --bind -o ro {byte_run} {byte_run}
    {env}{sys.executable} -m gptjax.train --config={TINY} --workdir={byte_run} --config.train.max_steps=20 \
      >/dev/null 2>{out}.train || echo $? > {out}.rc
    {env}{sys.executable} -m gptjax.sample --workdir={byte_run} --prompt=def --max_new_tokens=4 \
      --temperature=0 >{out}.sample 2>&1
  """)
  assert proc.returncode == 0, proc.stderr
  assert open(f'{out}.rc').read().strip() == '2'
  assert open(f'{out}.train').read() == (f'error: cannot write to workdir {byte_run}: Read-only file system; make '
                                         'it writable (or use a workdir you can write to)\n')
  assert open(f'{out}.sample').read().startswith('def')  # reading needs no write


def without_root_override(*args):
  """The command with root's permission overrides (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) dropped,
  so permission bits apply to it as to any user. Skips where setpriv is missing or refused."""
  setpriv = shutil.which('setpriv')
  caps = '-dac_override,-dac_read_search'
  if setpriv is None or subprocess.run([setpriv, f'--bounding-set={caps}', 'true']).returncode != 0:
    pytest.skip('setpriv cannot drop capabilities here')
  return [setpriv, f'--bounding-set={caps}', f'--inh-caps={caps}', sys.executable, '-m', *args]


def test_workdir_without_write_permission(byte_run, tmp_path):
  locked = tmp_path / 'locked'
  shutil.copytree(byte_run, locked)
  os.chmod(locked, 0o555)
  before = tree_digest(str(locked))
  try:
    proc = subprocess.run(without_root_override('gptjax.train', f'--config={TINY}', f'--workdir={locked}',
                                                '--config.train.max_steps=20'),
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'XLA_FLAGS': ''},
                          timeout=300)
  finally:
    os.chmod(locked, 0o755)
  assert_one_line_error(proc)
  assert proc.stderr == (f'error: cannot write to workdir {locked}: Permission denied; make it writable (or use a '
                         'workdir you can write to)\n')
  assert tree_digest(str(locked)) == before


def test_data_file_without_read_permission(tmp_path):
  secret = tmp_path / 'secret.txt'
  secret.write_text(POEM)
  secret.chmod(0o000)
  proc = subprocess.run(without_root_override('gptjax.train', f'--config={TINY}', f'--workdir={tmp_path}/run',
                                              f'--config.data.path={secret}'),
                        capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'XLA_FLAGS': ''},
                        timeout=300)
  assert_one_line_error(proc)
  assert proc.stderr == (f'error: cannot read data file {secret}: Permission denied; make it readable, or pass '
                         'another --config.data.path=FILE\n')
  assert not os.path.exists(tmp_path / 'run')  # the workdir it would have made is not left behind
