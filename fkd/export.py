"""`python -m fkd.export`: A trained model as a serialised `jax.export` artifact. The code is in
fkd/serve/export.py."""

from fkd.serve.export import *  # noqa: F403
from fkd.serve.export import main

if __name__ == '__main__':
  main()
