"""Study expansion into plans of tasks with content-hash keys."""

from perfscale.plan.grid import expand_grid
from perfscale.plan.keys import stage_digest, task_key
from perfscale.plan.planner import Plan, PlanRows, Task, build_plan

__all__ = ["Plan", "PlanRows", "Task", "build_plan", "expand_grid", "stage_digest", "task_key"]
