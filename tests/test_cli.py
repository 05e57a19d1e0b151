"""Flag resolution, schema validation and the CLI's one-line errors (exit code 2, no run folder)."""

from pathlib import Path

import pytest

from sheeprl.algos.ppo.args import PPOConfig
from sheeprl.cli import UsageError, argv_to_overrides, build_config, main, resolve_flag, schema_fields
from sheeprl.registry import load_algorithms

FIELDS = schema_fields(PPOConfig)


@pytest.mark.parametrize(
    "flag, key",
    [
        ("num_envs", "env.num_envs"),
        ("env_id", "env.id"),
        ("env.id", "env.id"),
        ("total_steps", "algo.total_steps"),
        ("lr", "algo.optimizer.lr"),
        ("optimizer_lr", "algo.optimizer.lr"),
        ("checkpoint.every", "checkpoint.every"),
        ("checkpoint_every", "checkpoint.every"),
        ("devices", "fabric.devices"),
        ("seed", "seed"),
        ("eval_episodes", "eval_episodes"),
    ],
)
def test_flags_resolve_to_schema_keys(flag, key):
    assert resolve_flag(flag, FIELDS).key == key


def test_unknown_flag_suggests_the_closest_key():
    with pytest.raises(UsageError, match=r"unknown flag --num_env .*did you mean '--num_envs'"):
        resolve_flag("num_env", FIELDS)


def test_ambiguous_flag_names_the_candidates():
    with pytest.raises(UsageError, match=r"ambiguous flag --encoder.*algo.cnn_keys.encoder.*algo.mlp_keys.encoder"):
        resolve_flag("encoder", FIELDS)


def test_argv_spellings_become_hydra_overrides():
    out = argv_to_overrides(
        ["--num_envs", "8", "--env_id=Pendulum-v1", "algo.optimizer.lr=1e-3", "--capture_video", "--seed", "3"], FIELDS
    )
    assert out == ["env.num_envs=8", "env.id=Pendulum-v1", "algo.optimizer.lr=1e-3", "env.capture_video=true", "seed=3"]


def test_list_and_path_values():
    out = argv_to_overrides(["--algo.mlp_keys.encoder", "state,extra", "--resume_from", "a/b c.ckpt"], FIELDS)
    assert out == ["algo.mlp_keys.encoder=[state,extra]", "checkpoint.resume_from='a/b c.ckpt'"]


def test_compose_merges_flags_overrides_and_presets():
    _, cfg = build_config("ppo", ["--num_envs", "8", "algo.optimizer.lr=1e-3", "--seed", "3"])
    assert cfg.env.num_envs == 8 and cfg.algo.optimizer.lr == 1e-3 and cfg.seed == 3
    assert cfg.algo.rollout_steps == 64 and cfg.env.id == "CartPole-v1"
    _, cfg = build_config("ppo", ["exp=ppo_halfcheetah", "--total_steps", "4096"])
    assert cfg.env.id == "HalfCheetah-v5" and cfg.env.normalize_observation and cfg.algo.rollout_steps == 2048
    assert cfg.algo.total_steps == 4096


@pytest.mark.parametrize(("preset", "devices"), [("sac_decoupled_pendulum", 2), ("ppo_decoupled_cartpole", 3)])
def test_decoupled_presets_bring_their_processes(preset, devices):
    """``python sheeprl.py exp=<decoupled preset>`` runs as typed (a decoupled run refuses one process)."""
    from sheeprl.cli import _split_algo

    algo, rest = _split_algo([f"exp={preset}"])
    _, cfg = build_config(algo, rest)
    assert cfg.fabric.devices == devices
    _, cfg = build_config(algo, [*rest, "--devices", "5"])  # 4 trainers: both presets' batches split evenly
    assert cfg.fabric.devices == 5


def test_preset_selects_the_algorithm(capsys):
    from sheeprl.cli import _split_algo

    assert _split_algo(["exp=ppo_cartpole"])[0] == "ppo"


def test_registry_lists_ppo():
    specs = load_algorithms()
    assert "ppo" in specs and "Box" in specs["ppo"].action_spaces and not specs["ppo"].decoupled


def test_sheeprl_help_lists_algorithms(capsys):
    assert main(["--sheeprl_help"]) == 0
    out = capsys.readouterr().out
    assert "ppo" in out and "coupled" in out and "Discrete" in out


def test_algorithm_help_lists_every_argument(capsys):
    assert main(["ppo", "-h"]) == 0
    out = capsys.readouterr().out
    for text in ("env.num_envs", "--num_envs", "algo.optimizer.lr", "0.001", "GAE lambda", "checkpoint.resume_from"):
        assert text in out
    assert len([line for line in out.splitlines() if line.startswith("  ")]) == len(FIELDS) + 1


def test_help_shows_the_spellings_the_guides_use(capsys):
    """Generic leaves are shown with their group (--env_id, not --id); every shown flag resolves back to its key."""
    assert main(["ppo", "-h"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert rows["env.id"] == "--env_id" and rows["run_name"] == "--run_name" and rows["algo.name"] == "--algo_name"
    assert rows["buffer.size"] == "--buffer_size" and rows["checkpoint.every"] == "--checkpoint_every"
    assert rows["env.num_envs"] == "--num_envs" and rows["algo.total_steps"] == "--total_steps"
    for key, flag in rows.items():
        if key != "key":
            assert resolve_flag(flag[2:], FIELDS).key == key, (key, flag)


BAD_INPUTS = [
    (["ppp"], "unknown algorithm 'ppp' (did you mean 'ppo'?)"),
    (["ppo", "--num_env", "8"], "did you mean '--num_envs'"),
    (["ppo", "--encoder", "x"], "ambiguous flag --encoder"),
    (["ppo", "--env_id", "CartPol-v1"], "did you mean 'CartPole-v1'"),
    (["ppo", "--num_envs", "abc"], "env.num_envs"),
    (["ppo", "--num_envs", "0"], "env.num_envs must be >= 1"),
    (["ppo", "--timeout_s", "0"], "fabric.timeout_s must be >= 1"),
    (["ppo", "--cpu_matmul", "blas"], "fabric.cpu_matmul must be auto, onednn or mkl, got 'blas'"),
    (["ppo", "--minibatch_size", "100"], "does not divide"),
    (["ppo", "algo.nonexistent=3"], "unknown config key 'algo.nonexistent'"),
    (["ppo", "exp=nope"], "unknown preset exp=nope"),
    (["ppo", "run_name=a=b"], "cannot parse an override (mismatched input '=' expecting <EOF>)"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main([*argv, f"log_root={tmp_path / 'logs'}"] if argv[0] == "ppo" else argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "logs").exists() and list(Path(tmp_path).iterdir()) == []


def test_exit_code_from_a_real_process(cli, tmp_path):
    proc = cli("ppo", "--num_envs", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "sheeprl: error: env.num_envs must be >= 1, got 0"
    assert not (tmp_path / "logs").exists()


def test_plain_snapshot_reads_like_the_config():
    from omegaconf import OmegaConf

    from sheeprl.config import plain

    cfg = OmegaConf.create({"algo": {"gamma": 0.99, "tau": "${algo.gamma}", "keys": ["a", {"b": 2}]}, "seed": 3})
    snap = plain(cfg)
    assert snap.algo.gamma == 0.99 and snap.algo.tau == 0.99  # interpolations resolved
    assert snap.algo.keys[0] == "a" and snap.algo.keys[1].b == 2 and snap.seed == 3
    cfg.algo.gamma = 0.5
    assert snap.algo.gamma == 0.99  # a snapshot: later edits do not reach it
