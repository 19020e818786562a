"""Small studies shared by the engine end-to-end tests (their functions live in tests/fns.py)."""

STUDY = """\
name: e2e
seed: 3
retry: {app_error: 2}
stages:
  square:
    kind: function
    params: {callable: "fns.py:square"}
    grid:
      product: {x: [1, 2, 3, 4, 5]}
  total:
    kind: function
    params: {callable: "fns.py:total"}
    inputs: [square]
"""

FAILING = """\
name: failing
retry: {app_error: 2}
stages:
  fail:
    kind: function
    params: {callable: "fns.py:fail_on", mode: MODE}
    grid:
      product: {x: [1, 2, 3], bad: [2]}
  flaky:
    kind: function
    params: {callable: "fns.py:flaky"}
    grid:
      product: {x: [1, 2]}
"""

NOOP = """\
name: tiny
stages:
  touch:
    kind: noop
    grid:
      product: {x: [1, 2, 3]}
"""


def slow_squares(n: int, delay: float, name: str = "slow") -> str:
    """A study of n `slow_square` tasks (x = 0..n-1), each sleeping `delay` seconds: time to kill a run."""
    xs = ", ".join(map(str, range(n)))
    return f"""\
name: {name}
stages:
  square:
    kind: function
    params: {{callable: "fns.py:slow_square", delay: {delay}}}
    grid:
      product: {{x: [{xs}]}}
"""
