"""What ``CROPITrainer`` and ``CROPITaskRunner`` rely on in verl 0.9.1, checked at start-up (``check_verl``).

The trainer overrides hooks and private methods of verl's synchronous v1 trainer and reuses a Ray-wrapped task
runner's class; another verl could rename one, call it elsewhere or in another order, and a run would go on with a
boundary that never fires or a dataloader that is never swapped. ``check_verl`` reads verl's classes and sources
(nothing runs) and raises one ``ValueError`` naming the first missing piece:

- the version: ``verl==0.9.1``;
- the methods overridden or called: ``PPOTrainerSync`` hooks, ``_init_dataloader``, ``_load_checkpoint``,
  ``_save_checkpoint``, ``_consume_sync_metrics``, ``_balance_batch``, ``_validate``; the actor worker's ``to``;
- the attributes set or read, found in the source of the method that sets them (verl sets them in ``_setup``, not
  in ``__init__``): ``train_dataloader_it``, ``steps_per_epoch``, ``total_training_steps``, ``resource_pool_manager``,
  ``role_worker_mapping``, ``actor_rollout_wg``, ``parameter_sync_step``;
- the call order: ``_setup`` calls ``_init_dataloader`` before ``_load_checkpoint``; ``init`` calls ``_setup`` then
  ``on_init_end``; each step of ``fit`` calls ``step``, ``_save_checkpoint``, ``on_step_end`` and
  ``_consume_sync_metrics`` in that order; ``_step_once`` calls ``on_sample_end`` before ``_balance_batch``;
- Ray's ``__ray_metadata__.modified_class`` of ``TaskRunnerV1``, with ``init_agent_loop_manager``.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

VERL_VERSION = "0.9.1"
METHODS = ("_init_dataloader", "_load_checkpoint", "_save_checkpoint", "_consume_sync_metrics", "_balance_batch",
           "_validate", "on_init_end", "on_step_end", "on_sample_end", "on_train_end", "fit", "init", "_setup",
           "_step_once", "step")
# attribute -> the method whose source sets it
ATTRIBUTES = {"train_dataloader_it": "_init_dataloader", "steps_per_epoch": "_init_dataloader",
              "total_training_steps": "_init_dataloader", "resource_pool_manager": "_init_resource_pool_mgr",
              "role_worker_mapping": "_init_resource_pool_mgr", "actor_rollout_wg": "_setup",
              "parameter_sync_step": "__init__"}
# method -> the self.<call>s it must make, in this order
CALL_ORDER = {"_setup": ("_init_dataloader", "_load_checkpoint"), "init": ("_setup", "on_init_end"),
              "fit": ("step", "_save_checkpoint", "on_step_end", "_consume_sync_metrics"),
              "_step_once": ("on_sample_end", "_balance_batch")}


def self_calls(function) -> list[str]:
    """The names of the ``self.<name>(...)`` calls in ``function``'s source, in source order."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "self"]
    return [c.func.attr for c in sorted(calls, key=lambda c: (c.lineno, c.col_offset))]


def self_assigned(function) -> set[str]:
    """The ``self.<name>`` attributes ``function``'s source assigns."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {t.attr for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}


def in_order(calls: list[str], wanted: tuple[str, ...]) -> bool:
    """``wanted`` is a subsequence of ``calls``."""
    it = iter(calls)
    return all(name in it for name in wanted)


def contract_problem(version: str, trainer: type, actor_worker: type, task_runner) -> str | None:
    """The first piece of the contract (module docstring) that ``trainer`` (verl's ``PPOTrainerSync``),
    ``actor_worker`` (``ActorRolloutRefWorker``) and ``task_runner`` (``TaskRunnerV1``) of verl ``version`` lack."""
    if version != VERL_VERSION:
        return f"verl {version} is installed; cropi-verl runs on verl=={VERL_VERSION} (pip install verl=={VERL_VERSION})"
    for name in METHODS:
        if not callable(getattr(trainer, name, None)):
            return f"{trainer.__name__}.{name} is missing"
    if not callable(getattr(actor_worker, "to", None)):
        return f"{actor_worker.__name__}.to (the actor's offload around an influence pass) is missing"
    for attr, method in ATTRIBUTES.items():
        if not callable(getattr(trainer, method, None)) or attr not in self_assigned(getattr(trainer, method)):
            return f"{trainer.__name__}.{method} no longer sets self.{attr}"
    for method, wanted in CALL_ORDER.items():
        if not in_order(self_calls(getattr(trainer, method)), wanted):
            return f"{trainer.__name__}.{method} no longer calls {', '.join(wanted)} in this order"
    modified = getattr(getattr(task_runner, "__ray_metadata__", None), "modified_class", None)
    if modified is None or not callable(getattr(modified, "init_agent_loop_manager", None)):
        return "TaskRunnerV1.__ray_metadata__.modified_class.init_agent_loop_manager (Ray's wrapped task runner) is missing"
    return None


def check_verl() -> None:
    """``contract_problem`` on the installed verl, as one ``ValueError``."""
    import verl
    from verl.trainer.main_ppo import TaskRunnerV1
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
    from verl.workers.engine_workers import ActorRolloutRefWorker

    problem = contract_problem(verl.__version__, PPOTrainerSync, ActorRolloutRefWorker, TaskRunnerV1)
    if problem:
        raise ValueError(f"verl contract: {problem}")
