"""The ONNX export moved out of eval/ (scoring): `python -m deploy.export`.

Run as before (as a file or with -m), this says where in one line and exits 2; imported, it raises an ImportError
naming deploy.export. It imports nothing of the project.
"""

import sys

if __name__ == "__main__":
    print("error: eval.export moved: run python -m deploy.export with the same arguments", file=sys.stderr)
    sys.exit(2)
raise ImportError("eval.export moved to deploy.export")
