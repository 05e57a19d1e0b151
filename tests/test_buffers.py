"""Tests for sheeprl.data: ring semantics, sampling correctness, memmap storage and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from sheeprl.data import ReplayBuffer, SequentialReplayBuffer

N_ENVS = 3


def steps(start: int, count: int, n_envs: int = N_ENVS) -> dict[str, torch.Tensor]:
    """``count`` steps whose values encode (global step, env): step t, env e holds t * 100 + e."""
    t = torch.arange(start, start + count).view(count, 1)
    e = torch.arange(n_envs).view(1, n_envs)
    code = t * 100 + e
    return {
        "state": torch.stack((code, -code), dim=-1).float(),  # (T, n_envs, 2)
        "actions": code.unsqueeze(-1),  # (T, n_envs, 1) int64
        "dones": (code % 2 == 0).unsqueeze(-1),  # (T, n_envs, 1) bool
        # No episode ends here (sample_next_obs needs the flags; test_sample_next_obs_respects_episode_ends sets them).
        "terminated": torch.zeros(count, n_envs),
        "truncated": torch.zeros(count, n_envs, dtype=torch.bool),
    }


def fill(rb: ReplayBuffer, count: int, start: int = 0, step_by_step: bool = True) -> None:
    if step_by_step:
        for i in range(count):
            rb.add(steps(start + i, 1, rb.n_envs))
    else:
        rb.add(steps(start, count, rb.n_envs))


def codes(td: TensorDict) -> torch.Tensor:
    return td["actions"][..., 0]


# ---------------------------------------------------------------- add / shapes / ring


def test_add_allocates_from_first_data():
    rb = ReplayBuffer(8, N_ENVS)
    assert len(rb) == 0 and rb.keys() == []
    fill(rb, 1)
    assert rb.buffer.batch_size == torch.Size([8, N_ENVS])
    assert rb["state"].shape == (8, N_ENVS, 2) and rb["state"].dtype == torch.float32
    assert rb["actions"].dtype == torch.int64 and rb["dones"].dtype == torch.bool
    assert len(rb) == 1 and rb.pos == 1 and not rb.full


def test_sample_shapes_and_dtypes():
    rb = ReplayBuffer(16, N_ENVS)
    fill(rb, 5)
    td = rb.sample(7, n_samples=4)
    assert td.batch_size == torch.Size([4, 7])
    assert td["state"].shape == (4, 7, 2) and td["actions"].shape == (4, 7, 1)
    assert td["dones"].dtype == torch.bool
    # Only stored steps are sampled, and rows stay consistent across keys.
    c = codes(td)
    assert ((c // 100) < 5).all()
    assert torch.equal(td["state"][..., 0], c.float())


def test_numpy_and_tensordict_inputs():
    rb = ReplayBuffer(4, 2)
    rb.add({"state": np.ones((1, 2, 3), dtype=np.float32)})
    rb.add(TensorDict({"state": torch.full((2, 2, 3), 2.0)}, batch_size=(2, 2)))
    rb.add({"state": np.full((1, 2, 3), 3.0)})  # float64 input: cast to the stored float32
    assert rb["state"].dtype == torch.float32
    assert rb.to_tensordict()["state"][:, 0, 0].tolist() == [1.0, 2.0, 2.0, 3.0]


def test_add_detaches_values_that_require_grad():
    rb = ReplayBuffer(4, 2)
    w = torch.ones(1, 2, 1, requires_grad=True)
    rb.add({"values": w * 2})  # allocation + general path
    rb.add({"values": w * 3})  # single-step fast path
    rb.add({"values": (w * 4).expand(2, 2, 1)})  # multi-step path
    assert not rb["values"].requires_grad and rb["values"].grad_fn is None
    assert rb.to_tensordict()["values"][:, 0, 0].tolist() == [2.0, 3.0, 4.0, 4.0]


@pytest.mark.parametrize("step_by_step", [True, False])
def test_wraparound_keeps_newest_in_order(step_by_step):
    rb = ReplayBuffer(5, N_ENVS)
    fill(rb, 12, step_by_step=step_by_step)
    assert rb.full and len(rb) == 5 and rb.pos == 12 % 5
    td = rb.to_tensordict()
    assert td.batch_size == torch.Size([5, N_ENVS])
    expected = steps(7, 5)
    for key, value in expected.items():
        assert torch.equal(td[key], value), key


def test_add_chunks_crossing_the_end():
    rb = ReplayBuffer(5, N_ENVS)
    fill(rb, 3, step_by_step=False)
    fill(rb, 4, start=3, step_by_step=False)  # rows 3, 4, 0, 1
    assert rb.pos == 2 and rb.full
    assert codes(rb.to_tensordict())[:, 0].tolist() == [200, 300, 400, 500, 600]


@pytest.mark.parametrize("start_pos", [0, 2])
def test_add_longer_than_buffer_keeps_last(start_pos):
    rb = ReplayBuffer(4, N_ENVS)
    fill(rb, start_pos)
    fill(rb, 11, start=start_pos, step_by_step=False)
    total = start_pos + 11
    assert rb.full and rb.pos == total % 4
    assert codes(rb.to_tensordict())[:, 1].tolist() == [(total - 4 + i) * 100 + 1 for i in range(4)]


def test_to_tensordict_is_a_copy_and_partial():
    rb = ReplayBuffer(6, N_ENVS)
    assert rb.to_tensordict().batch_size == torch.Size([0, N_ENVS])
    fill(rb, 3)
    td = rb.to_tensordict()
    assert td.batch_size == torch.Size([3, N_ENVS])
    td["actions"].zero_()
    assert codes(rb.to_tensordict())[:, 0].tolist() == [0, 100, 200]


def test_reset_keeps_storage():
    rb = ReplayBuffer(4, N_ENVS)
    fill(rb, 6)
    storage = rb["state"]
    rb.reset()
    assert len(rb) == 0 and rb.pos == 0 and not rb.full
    fill(rb, 2, start=50)
    assert rb["state"] is storage
    assert codes(rb.to_tensordict())[:, 0].tolist() == [5000, 5100]


@pytest.mark.parametrize("memmap", [False, True])
def test_add_step_equals_add_of_one_step(tmp_path, memmap):
    """add_step(x) == add(x[None]): torch and numpy values, dtypes cast to the stored ones, around the ring."""
    kwargs = {"memmap": True, "memmap_dir": tmp_path} if memmap else {}
    a, b = ReplayBuffer(4, N_ENVS, **kwargs), ReplayBuffer(4, N_ENVS)
    for t in range(7):
        one = {k: v[0] for k, v in steps(t, 1).items()}
        if t % 2:  # numpy inputs, rewards as float64 as an env returns them
            one = {k: v.numpy() for k, v in one.items()}
            one["state"] = one["state"].astype(np.float64)
        a.add_step(one)
        b.add(steps(t, 1))
    assert a.pos == b.pos and a.full and len(a) == len(b)
    for key in b.keys():
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_add_step_first_call_and_errors_go_through_add():
    rb = ReplayBuffer(4, N_ENVS)
    rb.add_step({"state": np.ones((N_ENVS, 2), dtype=np.float32), "dones": np.zeros(N_ENVS, dtype=bool)})
    assert rb["state"].dtype == torch.float32 and rb["dones"].dtype == torch.bool and len(rb) == 1
    before = rb.to_dict()
    with pytest.raises(ValueError, match=r"'state'.*per-env shape"):
        rb.add_step({"state": np.ones((N_ENVS, 3), dtype=np.float32), "dones": np.zeros(N_ENVS, dtype=bool)})
    with pytest.raises(ValueError, match="missing \\['dones'\\]"):
        rb.add_step({"state": np.ones((N_ENVS, 2), dtype=np.float32)})
    assert len(rb) == 1 and all(torch.equal(before[k], v) for k, v in rb.to_dict().items())
    w = torch.ones(N_ENVS, 2, requires_grad=True)
    rb.add_step({"state": w * 2, "dones": torch.ones(N_ENVS, dtype=torch.bool)})
    assert not rb["state"].requires_grad and rb["state"][1].tolist() == [[2.0, 2.0]] * N_ENVS


# ---------------------------------------------------------------- errors


def test_key_and_shape_mismatch_raise_without_writing():
    rb = ReplayBuffer(4, N_ENVS)
    fill(rb, 1)
    before = rb.to_tensordict()
    bad_keys = steps(1, 1)
    del bad_keys["dones"]
    with pytest.raises(ValueError, match="missing \\['dones'\\]"):
        rb.add(bad_keys)
    extra = {**steps(1, 1), "other": torch.zeros(1, N_ENVS)}
    with pytest.raises(ValueError, match="unexpected \\['other'\\]"):
        rb.add(extra)
    bad_shape = steps(1, 1)
    bad_shape["state"] = torch.zeros(1, N_ENVS, 3)
    with pytest.raises(ValueError, match=r"'state'.*per-env shape"):
        rb.add(bad_shape)
    with pytest.raises(ValueError, match="n_envs=3"):
        rb.add(steps(1, 1, n_envs=2))
    uneven = steps(1, 2)
    uneven["actions"] = uneven["actions"][:1]
    with pytest.raises(ValueError, match="time steps"):
        rb.add(uneven)
    assert len(rb) == 1 and (rb.to_tensordict() == before).all()


def test_sample_errors():
    rb = ReplayBuffer(4, N_ENVS)
    with pytest.raises(ValueError, match="empty"):
        rb.sample(2)
    fill(rb, 1)
    with pytest.raises(ValueError, match="at least 2"):
        rb.sample(2, sample_next_obs=True)
    with pytest.raises(ValueError, match="positive"):
        rb.sample(0)
    rb_obs = ReplayBuffer(4, N_ENVS, obs_keys=("pixels",))
    fill(rb_obs, 3)
    with pytest.raises(ValueError, match="pixels"):
        rb_obs.sample(2, sample_next_obs=True)


def test_constructor_errors():
    with pytest.raises(ValueError):
        ReplayBuffer(0)
    with pytest.raises(ValueError, match="memmap_dir"):
        ReplayBuffer(4, memmap=True)


# ---------------------------------------------------------------- next obs


@pytest.mark.parametrize("total", [3, 7, 10])
def test_sample_next_obs_matches_successor(total):
    size = 7
    rb = ReplayBuffer(size, N_ENVS)
    fill(rb, total)
    gen = torch.Generator().manual_seed(total)
    td = rb.sample(512, sample_next_obs=True, n_samples=2, generator=gen)
    assert td["next_state"].shape == td["state"].shape == (2, 512, 2)
    c = codes(td)
    step, env = c // 100, c % 100
    # Independent check: the successor of (step, env) is (step + 1, env), which must also be stored.
    oldest, newest = max(0, total - size), total - 1
    assert (step >= oldest).all() and (step < newest).all()
    assert torch.equal(td["next_state"][..., 0], ((step + 1) * 100 + env).float())
    assert torch.equal(td["next_state"][..., 1], -((step + 1) * 100 + env).float())
    # With enough draws every eligible (step, env) pair shows up, so sampling is not stuck on a subset.
    seen = set(zip(step.flatten().tolist(), env.flatten().tolist(), strict=True))
    assert seen == {(t, e) for t in range(oldest, newest) for e in range(N_ENVS)}


def test_sample_next_obs_respects_episode_ends():
    """The step before an autoreset is never paired with the next episode's first observation."""
    rb = ReplayBuffer(6, 2)
    for t in range(9):  # env 0: truncated at steps 2 and 6; env 1: terminated at steps 3 and 7
        data = steps(t, 1, n_envs=2)
        data["truncated"][0, 0] = t in (2, 6)
        data["terminated"][0, 1] = float(t in (3, 7))
        rb.add(data)
    td = rb.sample(4000, sample_next_obs=True, generator=torch.Generator().manual_seed(0))
    c = codes(td)
    step, env = c // 100, c % 100
    assert not ((env == 0) & (step == 6)).any()  # truncated: its real successor is not stored
    assert ((env == 0) & (step == 5)).any() and ((env == 1) & (step == 7)).any()  # everything else is drawn
    terminated = (env == 1) & ((step == 3) | (step == 7))
    assert torch.equal(td["next_state"][terminated], td["state"][terminated])  # not step 8's first observation
    rest = ~terminated
    assert torch.equal(td["next_state"][rest][:, 0], ((step[rest] + 1) * 100 + env[rest]).float())
    # Flags are required: without them episode ends cannot be respected.
    bare = ReplayBuffer(4, 1)
    bare.add({"state": torch.zeros(3, 1, 2)})
    with pytest.raises(ValueError, match="terminated"):
        bare.sample(2, sample_next_obs=True)


def test_sample_covers_all_stored_transitions_uniformly():
    rb = ReplayBuffer(5, 2)
    fill(rb, 8)  # stored steps 3..7
    gen = torch.Generator().manual_seed(0)
    c = codes(rb.sample(20_000, generator=gen)).flatten()
    counts = torch.bincount((c // 100 - 3) * 2 + c % 100, minlength=10).float()
    assert counts.numel() == 10
    assert (counts / counts.mean() - 1).abs().max() < 0.1


def test_sample_is_reproducible_with_generator():
    rb = ReplayBuffer(10, N_ENVS)
    fill(rb, 13)
    a = rb.sample(32, generator=torch.Generator().manual_seed(3))
    b = rb.sample(32, generator=torch.Generator().manual_seed(3))
    assert (a == b).all()


# ---------------------------------------------------------------- memmap


def test_memmap_writes_files_and_matches_ram(tmp_path):
    ram = ReplayBuffer(6, N_ENVS)
    mm = ReplayBuffer(6, N_ENVS, memmap=True, memmap_dir=tmp_path / "buf")
    for rb in (ram, mm):
        fill(rb, 9)
    files = sorted(p.name for p in (tmp_path / "buf").iterdir())
    assert files == ["actions.memmap", "dones.memmap", "state.memmap", "terminated.memmap", "truncated.memmap"]
    assert (tmp_path / "buf" / "state.memmap").stat().st_size == 6 * N_ENVS * 2 * 4
    assert (ram.to_tensordict() == mm.to_tensordict()).all()
    for next_obs in (False, True):
        a = ram.sample(64, sample_next_obs=next_obs, generator=torch.Generator().manual_seed(1))
        b = mm.sample(64, sample_next_obs=next_obs, generator=torch.Generator().manual_seed(1))
        assert (a == b).all()
    # The data really lives in the file.
    on_disk = np.memmap(tmp_path / "buf" / "actions.memmap", dtype=np.int64, mode="r").reshape(6, N_ENVS)
    assert torch.equal(torch.from_numpy(np.array(on_disk)), mm["actions"][..., 0])


def test_memmap_sanitizes_key_file_names(tmp_path):
    rb = ReplayBuffer(2, 1, memmap=True, memmap_dir=tmp_path)
    rb.add({"obs/rgb": torch.zeros(1, 1, 2), "obs_rgb": torch.ones(1, 1, 2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obs_rgb.memmap", "obs_rgb_1.memmap"]
    assert rb["obs_rgb"].sum() == 2 and rb["obs/rgb"].sum() == 0


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("total", [0, 4, 11])
@pytest.mark.parametrize("memmap", [False, True])
def test_state_dict_round_trip_through_file(tmp_path, total, memmap):
    def make(name: str) -> ReplayBuffer:
        return ReplayBuffer(6, N_ENVS, memmap=memmap, memmap_dir=tmp_path / name if memmap else None)

    src = make("src")
    fill(src, total)
    torch.save({"rb": src.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["rb"]
    dst = make("dst")
    dst.load_state_dict(state)
    assert (dst.pos, dst.full, len(dst)) == (src.pos, src.full, len(src))
    assert (dst.to_tensordict() == src.to_tensordict()).all()
    if total:
        a = src.sample(50, sample_next_obs=True, generator=torch.Generator().manual_seed(0))
        b = dst.sample(50, sample_next_obs=True, generator=torch.Generator().manual_seed(0))
        assert (a == b).all()
        # Both continue identically.
        fill(src, 3, start=total)
        fill(dst, 3, start=total)
        assert (dst.to_tensordict() == src.to_tensordict()).all()


def test_partial_state_dict_is_small(tmp_path):
    rb = ReplayBuffer(10_000, N_ENVS)
    fill(rb, 2)
    torch.save(rb.state_dict(), tmp_path / "small.pt")
    # Saving a slice of the storage would have written all 10k rows (about 720 kB).
    assert (tmp_path / "small.pt").stat().st_size < 20_000


def test_load_state_dict_into_used_buffer_and_mismatch():
    src = ReplayBuffer(5, N_ENVS)
    fill(src, 7)
    dst = ReplayBuffer(5, N_ENVS)
    fill(dst, 2, start=90)
    dst.load_state_dict(src.state_dict())
    assert (dst.to_tensordict() == src.to_tensordict()).all()
    with pytest.raises(ValueError, match="buffer_size"):
        ReplayBuffer(4, N_ENVS).load_state_dict(src.state_dict())
    other = ReplayBuffer(5, N_ENVS)
    other.add({"state": torch.zeros(1, N_ENVS, 2)})
    with pytest.raises(ValueError, match="keys"):
        other.load_state_dict(src.state_dict())


# ---------------------------------------------------------------- sequential


@pytest.mark.parametrize("total", [6, 9, 23])
def test_sequential_sample_contiguous_and_within_stored(total):
    size, seq_len = 9, 4
    rb = SequentialReplayBuffer(size, N_ENVS)
    fill(rb, total)
    td = rb.sample(64, seq_len, n_samples=3, generator=torch.Generator().manual_seed(total))
    assert td.batch_size == torch.Size([3, seq_len, 64])
    c = codes(td)
    step, env = c // 100, c % 100
    # One env per sequence, consecutive steps, never across the write position (i.e. only stored steps).
    assert (env == env[:, :1]).all()
    assert (step[:, 1:] - step[:, :-1] == 1).all()
    assert (step >= max(0, total - size)).all() and (step <= total - 1).all()
    starts = set(step[:, 0].flatten().tolist())
    assert starts == set(range(max(0, total - size), total - seq_len + 1))


def test_sequential_sample_errors():
    rb = SequentialReplayBuffer(8, N_ENVS)
    with pytest.raises(ValueError, match="empty"):
        rb.sample(2, 2)
    fill(rb, 3)
    with pytest.raises(ValueError, match="sequence_length"):
        rb.sample(2, 4)
    assert rb.sample(2, 3).batch_size == torch.Size([1, 3, 2])
