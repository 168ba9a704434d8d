"""`python -m fkd.evaluate`: Scores every finished model of a workdir and writes its reports. The
code is in fkd/evaluation/evaluate.py."""

from fkd.evaluation.evaluate import *  # noqa: F403
from fkd.evaluation.evaluate import main

if __name__ == '__main__':
  main()
