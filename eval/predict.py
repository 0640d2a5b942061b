"""Maps of scenes moved out of eval/ (scoring): `python deploy/predict.py`.

Run as before (as a file or with -m), this says where in one line and exits 2; imported, it raises an ImportError
naming deploy.predict. It imports nothing of the project.
"""

import sys

if __name__ == "__main__":
    print("error: eval/predict.py moved: run python deploy/predict.py with the same arguments", file=sys.stderr)
    sys.exit(2)
raise ImportError("eval.predict moved to deploy.predict")
