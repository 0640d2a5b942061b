"""Entry points run as users run them: a mistake is one line on stderr and exit code 2, never a traceback."""

import subprocess
import sys

import pytest

from tests.train_fixtures import REPO


# eval/eval.py runs as a process in tests/test_eval_cli.py (a missing checkpoint: one line); it reads overrides
# through the same util.cli.config_from_args, whose message for this mistake tests/test_config.py pins.
@pytest.mark.slow
def test_unknown_config_key_is_one_line_with_a_suggestion():
    result = subprocess.run([sys.executable, "train.py", "--config", "configs/loveda.yaml", "train.lrr=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: command line override 'train.lrr=1': unknown key 'train.lrr' (did you mean 'train.lr'?)"]
    assert "Traceback" not in result.stderr
