"""Entry points run as users run them: a mistake is one line on stderr and exit code 2, never a traceback."""

import subprocess
import sys

import pytest

from tests.train_fixtures import REPO


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "eval/eval.py"])
def test_unknown_config_key_is_one_line_with_a_suggestion(script):
    extra = ["--checkpoint", "none.pth"] if script.startswith("eval") else []
    result = subprocess.run([sys.executable, script, "--config", "configs/loveda.yaml", *extra, "train.lrr=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: command line override 'train.lrr=1': unknown key 'train.lrr' (did you mean 'train.lr'?)"]
    assert "Traceback" not in result.stderr
