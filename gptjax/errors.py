"""The project's own error type: a problem with what the user asked for, said in one line.

Entry points print `error: <message>` and exit with status 2 (no traceback unless --debug); library
callers catch `GptjaxError`. Messages say what is wrong and what to do about it.
"""


class GptjaxError(ValueError):
  """Bad input or an unusable run directory; the message is one line meant for the user."""
