"""scripts/mutants.py stays applicable: every mutant's text is in the tree exactly once and its tests exist, so a
refactor that moves the code a mutant edits fails here, not minutes into a mutation run."""

import pytest

from scripts.mutants import MUTANTS, Mutant, stale


def test_every_mutant_finds_its_text_exactly_once_and_names_existing_tests():
    assert [problem for problem in map(stale, MUTANTS) if problem] == []
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)


@pytest.mark.parametrize(("before", "tests", "named"), [
    ("no such text", ("tests/test_mutants.py",), "holds its text 0 times"),
    ("\n", ("tests/test_mutants.py",), "times, not once"),
    ("def ema_update", ("tests/test_no_such_file.py",), "no test file tests/test_no_such_file.py"),
])
def test_a_mutant_that_does_not_apply_exactly_once_is_refused_by_name(before, tests, named):
    problem = stale(Mutant("example", "util/ema.py", before, "", "", tests))
    assert problem is not None and problem.startswith("mutant example: ") and named in problem

