"""The one exception type fkd raises for user errors; `fkd.main` prints it as a one-line message."""


class FkdError(Exception):
  """A problem with the user's input (config, paths, data) rather than a bug in fkd."""
