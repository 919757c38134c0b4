"""Runs many command lines cheaply: `python -m MODULE ARGS...`, each in a forked child of one process
that imported the library once (the imports are most of a small command's start-up time).

Protocol: one JSON object per line on stdin, {"module": "gptjax.train", "argv": [...]}; for each, one
JSON line on stdout, {"rc": exit status, "stdout": ..., "stderr": ...}. A child calls the module's
main(), as `python -m MODULE` does, with its own stdin, stdout and stderr; an exception that
escapes it is printed as Python prints it, with exit status 1.
"""

import importlib
import json
import os
import sys
import tempfile
import traceback

COMMANDS = ('gptjax.train', 'gptjax.sample')
for _name in ('gptjax.cli',) + COMMANDS:  # imported once here, shared by every child
  importlib.import_module(_name)


def run_in_child(module: str, argv: list[str]) -> dict:
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    pid = os.fork()
    if pid == 0:
      code = 1
      try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.argv = [module] + argv
        try:
          importlib.import_module(module).main()  # what `if __name__ == '__main__': main()` runs
          code = 0
        except SystemExit as e:
          code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
          if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
        except BaseException:  # pylint: disable=broad-except
          traceback.print_exc()
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    return {'rc': rc, 'stdout': out.read().decode('utf-8', 'replace'),
            'stderr': err.read().decode('utf-8', 'replace')}


def main():
  for line in sys.stdin:
    request = json.loads(line)
    result = run_in_child(request['module'], request['argv'])
    sys.stdout.write(json.dumps(result) + '\n')
    sys.stdout.flush()


if __name__ == '__main__':
  main()
