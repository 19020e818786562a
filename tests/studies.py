"""Small studies shared by the engine end-to-end tests (their functions live in tests/fns.py), and the
reduced Dissimilarity study that tests/test_metric_study.py and `benchmarks/dissimilarity_study.py --quick`
both run."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

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


def reduced_dissimilarity_study(folder: Path) -> Path:
    """workflows/dissimilarity_study.yaml cut to wine and diabetes (80 rows each), four corruptions each and
    no generator, written into `folder`: its path."""
    study = yaml.safe_load((ROOT / "workflows" / "dissimilarity_study.yaml").read_text())
    keep = {
        f"{t}_{s}"
        for t in ("wine", "diabetes")
        for s in ("data", "split", "corrupt", "eval_corrupt", "study")
    }
    stages = {k: v for k, v in study["stages"].items() if k in keep}
    for name in ("wine", "diabetes"):
        stages[f"{name}_split"]["params"]["rows"] = 80
        stages[f"{name}_corrupt"]["grid"] = {
            "zip": {"corruption": ["identity", "noise", "noise", "shuffle"], "level": [0, 0.5, 2.0, 1.0]}
        }
        params = stages[f"{name}_eval_corrupt"]["params"]
        params["metrics"] = ["kl_divergence", "dissimilarity", "ml_efficacy"]
        params["options"]["ml_efficacy"]["models"] = ["decision_tree"]
        stages[f"{name}_study"]["inputs"] = [f"{name}_eval_corrupt"]
        stages[f"{name}_study"]["params"]["metrics"] = ["kl_divergence", "dissimilarity"]
    study["stages"] = stages
    path = folder / "dissimilarity-small.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path
