"""Every ``slow`` mark says why the test may stay out of `make test`: its ``reason`` names what
still covers it there (CI's 30-minute budget leaves the larger variants to `make test-all`)."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def bare_slow_marks(source, filename="<test>"):
    """``line`` of every ``pytest.mark.slow`` in ``source`` not called with a non-empty string
    ``reason=``."""
    tree = ast.parse(source, filename)
    with_reason = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and any(
                k.arg == "reason" and not (isinstance(k.value, ast.Constant) and not k.value.value)
                for k in node.keywords):
            with_reason.add(id(node.func))
    return sorted(node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "slow"
            and isinstance(node.value, ast.Attribute) and node.value.attr == "mark"
            and id(node) not in with_reason)


def test_every_slow_mark_names_what_still_covers_it():
    bare = [f"{path.name}:{line}" for path in sorted(TESTS.glob("*.py"))
            for line in bare_slow_marks(path.read_text(), str(path))]
    assert not bare, f"slow marks without a reason (what still covers the test): {bare}"


def test_the_checker_sees_a_bare_mark():
    """A test that cannot fail is a defect: the checker finds marks without a reason."""
    source = ('@pytest.mark.slow\ndef test_a(): pass\n'
              '@pytest.mark.slow(reason="")\ndef test_b(): pass\n'
              '@pytest.mark.parametrize("x", [1, pytest.param(2, marks=pytest.mark.slow)])\n'
              'def test_c(x): pass\n'
              '@pytest.mark.slow(reason="test_c")\ndef test_d(): pass\n'
              'SLOW = pytest.mark.slow(reason="test_c")\n')
    assert bare_slow_marks(source) == [1, 3, 5]
