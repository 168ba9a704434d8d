"""`python -m fkd.predict`: Landmarks on photos, folders and video. The code is in
fkd/serve/predict.py.

The Python API (`fkd.predict.Predictor`, `Face`, …) is re-exported from there.
"""

from fkd.serve.predict import *  # noqa: F403
from fkd.serve.predict import main

if __name__ == '__main__':
  main()
