"""The project's own error type: a problem with what the user asked for, said in one line.

Entry points print `error: <message>` and exit with status 2 (no traceback unless --debug); library
callers catch `GptjaxError`. Messages say what is wrong and what to do about it.
"""

import errno


class GptjaxError(ValueError):
  """Bad input or an unusable run directory; the message is one line meant for the user."""


def write_remedy(code: int | None) -> str:
  """What to do when writing failed with OS error number `code`."""
  if code in (errno.ENOSPC, errno.EDQUOT):
    return 'free space on that disk (or use a workdir on another one)'
  return 'make it writable (or use a workdir you can write to)'


def os_error(e: OSError, subject: str, todo: str | None = None) -> GptjaxError:
  """One line for an OS error: `subject` (what and where), the system's reason, and what to do
  (`todo`; by default the remedy for a failed write)."""
  reason = e.strerror or str(e) or type(e).__name__
  return GptjaxError(f'{subject}: {reason}; {todo or write_remedy(e.errno)}')
