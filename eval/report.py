"""Tables of runs moved out of eval/ (scoring): `python scripts/report.py`.

Run as before (as a file or with -m), this says where in one line and exits 2; imported, it raises an ImportError
naming scripts.report. It imports nothing of the project.
"""

import sys

if __name__ == "__main__":
    print("error: eval/report.py moved: run python scripts/report.py with the same arguments", file=sys.stderr)
    sys.exit(2)
raise ImportError("eval.report moved to scripts.report")
