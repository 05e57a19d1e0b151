"""Recurrent PPO: sequences and masks on a hand-made rollout, state resets, checkpoints, smoke and learning runs."""

import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import run_dirs, scalars
from omegaconf import OmegaConf
from tensordict import TensorDict

from sheeprl.algos.ppo.loss import entropy_loss, policy_loss, value_loss
from sheeprl.algos.ppo_recurrent.agent import RecurrentPolicy, RecurrentPPOAgent
from sheeprl.algos.ppo_recurrent.args import PPORecurrentArgs, PPORecurrentConfig
from sheeprl.algos.ppo_recurrent.utils import split_into_sequences
from sheeprl.config import KeysConfig

OBS = gym.spaces.Dict({"state": gym.spaces.Box(-1.0, 1.0, (3,), np.float32)})


def make_agent(rnn_type: str = "lstm", action_space: gym.Space = gym.spaces.Discrete(2), obs=OBS, **kw):
    torch.manual_seed(0)
    cfg = OmegaConf.structured(PPORecurrentArgs(rnn_type=rnn_type, rnn_hidden_size=8, dense_units=8, **kw))
    return RecurrentPPOAgent(obs, action_space, cfg)


def rollout(agent: RecurrentPPOAgent, obs: torch.Tensor, is_first: torch.Tensor) -> TensorDict:
    """Act step by step as the training loop does: store (obs, is_first, state before the step, action, log-prob)."""
    T, N = is_first.shape
    state = agent.initial_state(N)
    steps = []
    for t in range(T):
        a, logp, v, new_state = agent.act({"state": obs[t]}, state, is_first[t])
        steps.append({"state": obs[t], "is_first": is_first[t], "rnn_states": state, "actions": a, "logprobs": logp,
                      "values": v})  # fmt: skip
        state = new_state
    return TensorDict({k: torch.stack([s[k] for s in steps]) for k in steps[0]}, batch_size=(T, N))


# ------------------------------------------------------------------------------------------------ sequences


def test_split_into_sequences_cuts_pads_and_masks():
    T, N, L = 7, 2, 3
    x = torch.arange(T * N, dtype=torch.float32).reshape(T, N) + 1
    seqs = split_into_sequences(TensorDict({"x": x, "o": x[..., None].repeat(1, 1, 4)}, batch_size=(T, N)), L)
    assert seqs.batch_size == torch.Size([L, 6]) and seqs["o"].shape == (L, 6, 4)
    for j in range(3):
        for n in range(N):
            steps = list(range(j * L, min((j + 1) * L, T)))
            col = seqs[:, j * N + n]
            assert col["x"][: len(steps)].tolist() == x[steps, n].tolist()  # env n, steps [jL, (j+1)L)
            assert col["mask"].tolist() == [1.0] * len(steps) + [0.0] * (L - len(steps))
            assert (col["x"][len(steps) :] == 0).all()  # padding
    assert seqs["mask"].sum() == T * N


@pytest.mark.parametrize("rnn_type, critic_rnn", [("lstm", False), ("gru", False), ("ln_gru", False), ("lstm", True)])
def test_training_unroll_resets_the_state_exactly_at_episode_starts(rnn_type, critic_rnn):
    """Sequences of 4 steps over a 10-step rollout; episodes start mid-sequence (t=2 in env 0, t=5 in env 1)."""
    agent = make_agent(rnn_type, critic_rnn=critic_rnn)
    T, N, L = 10, 2, 4
    obs = torch.randn(T, N, 3)
    is_first = torch.zeros(T, N, dtype=torch.bool)
    is_first[0] = True
    is_first[2, 0] = is_first[5, 1] = is_first[8, 0] = True
    data = rollout(agent, obs, is_first)
    seqs = split_into_sequences(data, L)

    def unroll(s):
        return agent({"state": s["state"]}, s["actions"], s["rnn_states"][0], s["is_first"])

    logp, _, values = unroll(seqs)
    mask = seqs["mask"].bool()
    # The training unroll (from each sequence's stored state, resetting at is_first) recomputes the rollout exactly.
    torch.testing.assert_close(logp[mask], seqs["logprobs"][mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(values[mask], seqs["values"][mask], atol=1e-5, rtol=0)

    # Changing what came before an episode start changes nothing from that start on, but does change the step before.
    changed = seqs.clone()
    changed["state"][:2, 0] += 5.0  # env 0, steps 0-1 (sequence 0); its episode restarts at step 2
    changed["state"][:1, 3] += 5.0  # env 1, step 4 (sequence 3 = steps 4-7); its episode restarts at step 5
    logp2, _, _ = unroll(changed)
    torch.testing.assert_close(logp2[2:, 0], logp[2:, 0])
    torch.testing.assert_close(logp2[1:, 3], logp[1:, 3])
    assert not torch.allclose(logp2[1, 0], logp[1, 0])
    # Without the reset flag the memory would leak across the start.
    no_reset = changed.clone()
    no_reset["is_first"][2, 0] = False
    assert not torch.allclose(unroll(no_reset)[0][2, 0], logp[2, 0])


@pytest.mark.parametrize("critic_rnn", [False, True])
def test_fused_lstm_unroll_matches_lstm_cells_step_by_step_with_gradients(critic_rnn):
    """The training unroll's fused LSTM (one input matmul, both cores in one block-diagonal cell) gives the outputs
    and the parameter gradients of ``nn.LSTMCell`` stepped one by one, resets included."""
    agent = make_agent("lstm", critic_rnn=critic_rnn)
    L, B = 6, 3
    feat = torch.randn(L, B, agent.encoder.output_dim)
    state = torch.randn(B, agent.state_size)
    is_first = torch.zeros(L, B, dtype=torch.bool)
    is_first[2, 0] = is_first[4, 2] = True

    def by_cells():
        s, outs = state, []
        for t in range(L):
            h_a, h_c, s = agent.core(feat[t], s, is_first[t])
            outs.append(torch.cat((h_a, h_c), -1))
        return torch.stack(outs)

    def grads(out):
        agent.zero_grad()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return [p.grad.clone() for p in agent.parameters() if p.grad is not None]

    reference = by_cells()
    fused = torch.cat(agent.core_sequence(feat, state, is_first), -1)
    torch.testing.assert_close(fused, reference, atol=1e-6, rtol=1e-5)
    for g_fused, g_ref in zip(
        grads(agent.core_sequence(feat, state, is_first)[0]), grads(by_cells()[..., :8]), strict=True
    ):
        torch.testing.assert_close(g_fused, g_ref, atol=1e-6, rtol=1e-5)
    if critic_rnn:  # the critic's core gets gradients only from the critic's outputs, and vice versa
        agent.zero_grad()
        agent.core_sequence(feat, state, is_first)[0].sum().backward()
        assert all(p.grad is None or not p.grad.any() for p in agent.critic_cell.parameters())


def test_padded_steps_carry_zero_weight():
    agent = make_agent()
    T, N, L = 6, 2, 4  # 2 sequences per env, the second padded by 2 steps
    obs = torch.randn(T, N, 3)
    is_first = torch.zeros(T, N, dtype=torch.bool)
    is_first[0] = is_first[3, 1] = True
    data = rollout(agent, obs, is_first)
    data["advantages"], data["returns"] = torch.randn(T, N), torch.randn(T, N)
    seqs = split_into_sequences(data, L)
    mask = seqs["mask"]
    assert mask.sum() == T * N and (mask == 0).sum() == 4

    def loss_and_grads(s):
        agent.zero_grad()
        logp, ent, v = agent({"state": s["state"]}, s["actions"], s["rnn_states"][0], s["is_first"])
        m = s["mask"]
        logp = logp + 0.1 * v  # a ratio != 1, so the clipping matters
        loss = (
            policy_loss(logp, s["logprobs"], s["advantages"], 0.2, m)
            + value_loss(v, s["values"], s["returns"], 0.2, True, m)
            + 0.01 * entropy_loss(ent, m)
        )
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in agent.parameters() if p.grad is not None]

    loss, grads = loss_and_grads(seqs)
    garbage = seqs.clone()
    pad = ~mask.bool()
    for key in ("advantages", "returns", "logprobs", "values"):
        garbage[key][pad] = 1e3
    garbage["state"][pad] = 7.0
    loss2, grads2 = loss_and_grads(garbage)
    assert torch.equal(loss, loss2)
    for g, g2 in zip(grads, grads2, strict=True):
        torch.testing.assert_close(g, g2)
    # The masked losses are the plain losses over the real steps only.
    logp, _, v = agent({"state": seqs["state"]}, seqs["actions"], seqs["rnn_states"][0], seqs["is_first"])
    real = mask.bool()
    torch.testing.assert_close(
        value_loss(v, seqs["values"], seqs["returns"], 0.2, False, mask),
        value_loss(v[real], seqs["values"][real], seqs["returns"][real], 0.2, False),
    )


def test_masked_losses_are_backward_compatible():
    new, old, adv = torch.randn(10), torch.randn(10), torch.randn(10)
    ones = torch.ones(10)
    assert torch.equal(policy_loss(new, old, adv, 0.2), policy_loss(new, old, adv, 0.2, ones))
    assert torch.equal(entropy_loss(new), entropy_loss(new, ones))
    assert torch.allclose(entropy_loss(new), -new.mean())


@pytest.mark.parametrize(
    "space",
    [gym.spaces.Box(-2.0, 2.0, (2,), np.float32), gym.spaces.MultiDiscrete([3, 2])],
    ids=["box", "multidiscrete"],
)
def test_other_action_spaces_and_pixel_keys(space):
    obs_space = gym.spaces.Dict(
        {"state": gym.spaces.Box(-1, 1, (3,), np.float32), "rgb": gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)}
    )
    agent = make_agent("gru", space, obs_space, cnn_keys=KeysConfig(["rgb"]), cnn_features_dim=16)
    obs = {"state": torch.randn(5, 2, 3), "rgb": torch.randint(0, 255, (5, 2, 3, 64, 64), dtype=torch.uint8)}
    is_first = torch.zeros(5, 2, dtype=torch.bool)
    is_first[0] = True
    state = agent.initial_state(2)
    stored = []
    for t in range(5):
        a, lp, _, state = agent.act({k: v[t] for k, v in obs.items()}, state, is_first[t])
        stored.append((a, lp))
    actions = torch.stack([a for a, _ in stored])
    logp, ent, values = agent(obs, actions, agent.initial_state(2), is_first)
    torch.testing.assert_close(logp, torch.stack([lp for _, lp in stored]), atol=1e-5, rtol=0)
    assert ent.shape == values.shape == (5, 2)


def test_evaluation_policy_resets_its_state_at_every_episode():
    from sheeprl.utils.evaluation import run_episodes

    cfg = OmegaConf.structured(PPORecurrentConfig)
    cfg.env.max_episode_steps = 7
    agent = RecurrentPPOAgent(
        gym.spaces.Dict({"state": gym.spaces.Box(-5, 5, (4,), np.float32)}), gym.spaces.Discrete(2), cfg.algo
    )
    policy = RecurrentPolicy(agent)
    flags = []
    step = agent.policy_step
    agent.policy_step = lambda obs, state, is_first, greedy: (
        flags.append(bool(is_first[0])),
        step(obs, state, is_first, greedy),
    )[1]  # noqa: E731,E501
    result = run_episodes(cfg, policy, 3, seed=0)
    lengths = [int(n) for n in result["lengths"]]
    # The state is reset on the first step of each episode and nowhere else.
    starts = np.cumsum([0] + lengths[:-1]).tolist()
    assert [i for i, f in enumerate(flags[: sum(lengths)]) if f] == starts
    policy.reset()
    assert policy.state is None


# ------------------------------------------------------------------------------------------------ end to end

FAST = ["--env_id", "CartPole-v1", "--num_envs", "2", "--rollout_steps", "20", "--sequence_length", "8",
        "--minibatch_size", "3", "--update_epochs", "2", "--metric.log_every", "80", "--num_threads", "1"]  # fmt: skip


def test_smoke_resume_state_round_trip_and_eval(cli, tmp_path):
    args = [*FAST, "--checkpoint.every", "80", "--keep_last", "0", "--eval_every", "80", "--eval_episodes", "2"]
    proc = cli("ppo_recurrent", *args, "--total_steps", "160", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    tags = scalars(run)
    for tag in ("Loss/policy_loss", "Loss/value_loss", "Info/approx_kl", "Time/sps_train", "Rewards/rew_avg"):
        assert tag in tags, sorted(tags)
    assert [s for s, _ in tags["Test/rew_avg"]] == [80, 160]  # --eval_every, the final one not repeated
    saved = torch.load(run / "checkpoint" / "ckpt_80_0.ckpt", weights_only=False)
    rnn_state = saved["ranks"][0]["extra"]["rnn_state"]
    assert rnn_state.shape == (2, 2 * 64) and rnn_state.abs().sum() > 0  # (envs, LSTM h and c)

    # Resuming at the saved step trains nothing: the agent and every env's recurrent state come back exactly.
    original = tmp_path / "ckpt_80.ckpt"
    shutil.copy(run / "checkpoint" / "ckpt_80_0.ckpt", original)
    proc = cli("ppo_recurrent", *args, "--total_steps", "80", "--eval_episodes", "0", "--resume_from", str(original),
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run2,) = [d for d in run_dirs(tmp_path / "logs") if d != run]
    again = torch.load(run2 / "checkpoint" / "ckpt_80_0.ckpt", weights_only=False)
    assert torch.equal(again["ranks"][0]["extra"]["rnn_state"], rnn_state)
    for name, tensor in saved["agent"].items():
        assert torch.equal(tensor, again["agent"][name]), name

    # Resuming inside the run continues it; then the checkpoint evaluates (stateful policy) and records a video.
    proc = cli("ppo_recurrent", *args, "--total_steps", "240", "--resume_from",
               str(run / "checkpoint" / "ckpt_160_0.ckpt"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0 and "resuming from step 160" in proc.stdout, proc.stderr[-3000:]
    assert max(s for s, _ in scalars(run)["Loss/policy_loss"]) == 240
    proc = cli("eval", "--checkpoint_path", str(run), "--eval_episodes", "1", "--capture_video", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((run / "videos").rglob("*.mp4"))


def test_bad_minibatch_is_a_usage_error(cli, tmp_path):
    proc = cli("ppo_recurrent", *FAST, "--minibatch_size", "4", cwd=tmp_path)
    assert proc.returncode == 2 and "sequences" in proc.stderr and not (tmp_path / "logs").exists()


@pytest.mark.distributed
def test_two_processes(cli, tmp_path):
    proc = cli("ppo_recurrent", *FAST, "--devices", "2", "--total_steps", "160", "--eval_episodes", "1",
               "--rnn_type", "gru", cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert [s for s, _ in scalars(run)["Loss/policy_loss"]] == [80, 160]  # 2 ranks x 2 envs x 20 steps per update
    ckpt = torch.load(run / "checkpoint" / "ckpt_160_0.ckpt", weights_only=False)
    assert [r["extra"]["rnn_state"].shape for r in ckpt["ranks"]] == [(2, 64), (2, 64)]  # each rank's own envs


# ------------------------------------------------------------------------------------------------ learning

LEARN = ["--eval_episodes", "20", "--num_threads", "1", "--metric.log_every", "25000"]


def greedy_return(cli, tmp_path, *args) -> tuple[int, float, str]:
    proc = cli(*args, *LEARN, cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    ((step, value),) = scalars(run)["Test/rew_avg"]
    return step, value, proc.stdout[-2000:]


@pytest.mark.learning
@pytest.mark.parametrize("seed", [1, 2])
def test_memory_solves_cartpole_without_velocities(cli, tmp_path, seed):
    """exp=ppo_recurrent_cartpole_novel: greedy mean return (Test/rew_avg, 20 episodes) >= 400 within 100k steps."""
    step, value, out = greedy_return(cli, tmp_path, "exp=ppo_recurrent_cartpole_novel", "--seed", str(seed))
    assert step >= 99_000 and value >= 400.0, out  # 390 rollouts of 8 x 32 steps = 99,840


@pytest.mark.learning
def test_feedforward_ppo_stays_far_below_without_velocities(cli, tmp_path):
    """The control: feed-forward PPO on the same masked env and budget stays far below (no memory, no velocity)."""
    step, value, out = greedy_return(cli, tmp_path, "exp=ppo_cartpole_novel", "--seed", "1")
    assert step >= 99_000 and value < 200.0, out
