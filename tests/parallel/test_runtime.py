"""Launch runtime: torchrun's environment, init_distributed, rank-0 randomness, peer failures.

Single-process checks run in this process and must leave torch.distributed untouched. Multi-rank
checks spawn fresh gloo processes that go through `init_distributed` themselves (file://
rendezvous, so concurrent test runs cannot collide on a port), plus one real `torchrun` launch
that reads its environment through `LaunchEnv.from_environ` (tcp rendezvous on a free port).
"""
from __future__ import annotations

import json
import os
import queue as queue_module
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wan_engine.env import LaunchEnv
from wan_engine.parallel import (
    ParallelConfig,
    ParallelMesh,
    PeerFailure,
    broadcast_from_rank0,
    init_distributed,
    peer_failure_guard,
    rank_device,
    shared_noise,
    shared_seed,
    shutdown,
)

TIMEOUT_S = 2.5  # process-group timeout of the failure tests
SLACK_S = 10.0   # scheduling slack on a loaded 2-core machine
NOISE_SHAPE = (1, 16, 2, 3, 5)

TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29511"}


# --- LaunchEnv ----------------------------------------------------------------------------------


def test_launch_env_without_launcher_is_a_single_process():
    env = LaunchEnv.from_environ({"PATH": "/bin"})
    assert env == LaunchEnv() and not env.is_distributed and not env.launched and env.world_size == 1


def test_launch_env_reads_every_torchrun_variable():
    env = LaunchEnv.from_environ(TORCHRUN_ENV)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (1, 4, 1, 2)
    assert (env.master_addr, env.master_port) == ("10.0.0.7", 29511)
    assert env.is_distributed and env.launched and not env.is_rank0
    assert env.tcp_init_method() == "tcp://10.0.0.7:29511"
    ipv6 = LaunchEnv.from_environ({**TORCHRUN_ENV, "MASTER_ADDR": "::1"})
    assert ipv6.tcp_init_method() == "tcp://[::1]:29511"


def test_launch_env_local_values_default_to_one_node():
    env = LaunchEnv.from_environ({"RANK": "2", "WORLD_SIZE": "3"})
    assert (env.local_rank, env.local_world_size, env.master_port) == (2, 3, None)
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT must be set"):
        env.tcp_init_method()
    # torchrun --nproc-per-node 1 is a launch, but needs no process group.
    single = LaunchEnv.from_environ({"RANK": "0", "WORLD_SIZE": "1"})
    assert single.launched and not single.is_distributed


@pytest.mark.parametrize("environ,message", [
    ({"RANK": "0"}, "sets RANK but not WORLD_SIZE"),
    ({"WORLD_SIZE": "2"}, "sets WORLD_SIZE but not RANK"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK must be an integer, got 'x'"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK must be in \[0, 1\], got 2"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE must be >= 1, got 0"),
    ({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "2"},
     r"LOCAL_RANK must be in \[0, 1\], got 2"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "3"}, r"LOCAL_WORLD_SIZE must be in \[1, 2\]"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "70000"}, r"MASTER_PORT must be in \[1, 65535\]"),
])
def test_launch_env_refuses_inconsistent_variables(environ, message):
    with pytest.raises(ValueError, match=message):
        LaunchEnv.from_environ(environ)


def test_launch_env_constructor_checks_ranges():
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        LaunchEnv(rank=2, world_size=2, launched=True)
    with pytest.raises(ValueError, match="world_size > 1 needs launched=True"):
        LaunchEnv(rank=0, world_size=2)


# --- init_distributed in one process --------------------------------------------------------------


def test_single_process_gets_the_trivial_mesh_without_torch_distributed():
    mesh = init_distributed(ParallelConfig(), LaunchEnv(), "cpu", num_heads=12)
    assert mesh == ParallelMesh.single() and not dist.is_initialized()
    launched_alone = LaunchEnv.from_environ({"RANK": "0", "WORLD_SIZE": "1"})
    assert init_distributed(ParallelConfig(), launched_alone, "cpu") == ParallelMesh.single()
    assert not dist.is_initialized()
    shutdown()  # nothing to shut down: a no-op


@pytest.mark.parametrize("config,launch,message", [
    (ParallelConfig(ulysses=2), LaunchEnv(),
     r"needs world_size=2 processes, but a single process was started; "
     r"launch with `torchrun --nproc-per-node 2`"),
    (ParallelConfig(ring=2, cfg=2), LaunchEnv(rank=0, world_size=2, launched=True),
     r"cfg=2 x ring=2 x ulysses=1 needs world_size=4 processes, but torchrun started WORLD_SIZE=2"),
    (ParallelConfig(), LaunchEnv(rank=1, world_size=3, launched=True), "needs world_size=1 processes"),
])
def test_world_size_mismatch_is_refused_before_initialising(config, launch, message):
    with pytest.raises(ValueError, match=message):
        init_distributed(config, launch, "cpu")
    assert not dist.is_initialized()


def test_invalid_layouts_and_arguments_are_refused_before_initialising():
    launch = LaunchEnv(rank=0, world_size=8, launched=True)
    with pytest.raises(ValueError, match="ulysses=8 does not divide num_heads=12"):
        init_distributed(ParallelConfig(ulysses=8), launch, "cpu", num_heads=12)
    with pytest.raises(ValueError, match="timeout_s must be a finite number of seconds > 0"):
        init_distributed(ParallelConfig(ulysses=8), launch, "cpu", timeout_s=0)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        init_distributed(ParallelConfig(ulysses=8), launch, "meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="LOCAL_RANK=0 needs a CUDA device cuda:0, but 0 are visible"):
            init_distributed(ParallelConfig(ulysses=8), launch, "cuda")
    assert not dist.is_initialized()


def test_rank_device_follows_local_rank():
    launch = LaunchEnv(rank=3, world_size=4, local_rank=1, local_world_size=2, launched=True)
    assert rank_device("cuda", launch) == torch.device("cuda", 1)
    assert rank_device("cpu", launch) == torch.device("cpu")
    assert rank_device("cuda:1", launch) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="contradicts LOCAL_RANK=1"):
        rank_device("cuda:0", launch)
    assert rank_device("cuda", LaunchEnv()) == torch.device("cuda", 0)


def test_shared_randomness_on_a_single_process():
    mesh = ParallelMesh.single()
    assert shared_seed(7, mesh) == 7
    drawn = shared_seed(None, mesh)
    assert isinstance(drawn, int) and 0 <= drawn < 2**63
    expected = torch.randn(NOISE_SHAPE, generator=torch.Generator().manual_seed(7))
    assert torch.equal(shared_noise(NOISE_SHAPE, 7, mesh), expected)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*63\)"):
        shared_seed(-1, mesh)


# --- spawned ranks ----------------------------------------------------------------------------


def _rank_entry(rank, world_size, init_file, results, worker, args):
    torch.set_num_threads(1)
    launch = LaunchEnv(rank=rank, world_size=world_size, local_rank=rank,
                       local_world_size=world_size, launched=True)
    try:
        results.put((rank, True, worker(launch, init_file, *args)))
    except BaseException:  # noqa: BLE001 - reported to the parent, then the process fails
        results.put((rank, False, traceback.format_exc()))
        results.close()
        results.join_thread()
        os._exit(1)  # without tearing the group down, like a crashed process


def _spawn(world_size, worker, *args, deadline_s=90.0):
    """Run `worker(launch, init_file, *args)` on `world_size` fresh processes; (ok, value) by rank."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    outcomes = {}
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [ctx.Process(target=_rank_entry, daemon=True,
                             args=(rank, world_size, init_file, results, worker, args))
                 for rank in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + deadline_s
        try:
            while len(outcomes) < world_size and time.monotonic() < deadline:
                try:
                    rank, ok, value = results.get(timeout=0.2)
                    outcomes[rank] = (ok, value)
                except queue_module.Empty:
                    for rank, p in enumerate(procs):
                        if rank not in outcomes and p.exitcode is not None:
                            outcomes[rank] = (False, f"exited with {p.exitcode}")
            for p in procs:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
    assert len(outcomes) == world_size, f"ranks {set(range(world_size)) - set(outcomes)} never reported"
    return [outcomes[r] for r in range(world_size)]


# cfg x ulysses: rank 0's values travel over the cfg group, then over each sp group.
LAYOUTS = {4: ParallelConfig(ulysses=2, cfg=2)}


def _gather_ints(value: int) -> list[int]:
    out = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(out, torch.tensor([value], dtype=torch.int64))
    return [int(t) for t in out]


def randomness_worker(launch, init_file):
    config = LAYOUTS[launch.world_size]
    mesh = init_distributed(config, launch, "cpu", timeout_s=60, num_heads=4,
                            init_method=f"file://{init_file}")
    result = {"backend": dist.get_backend(), "coord": tuple(mesh.coord), "rank": mesh.rank}
    result["drawn_seeds"] = _gather_ints(shared_seed(None, mesh))
    # A rank passing a different seed must still end up with rank 0's.
    result["given_seeds"] = _gather_ints(shared_seed(1234 + launch.rank, mesh))
    noise = shared_noise(NOISE_SHAPE, 99, mesh)
    result["noise_equal"] = bool(torch.equal(
        noise, torch.randn(NOISE_SHAPE, generator=torch.Generator().manual_seed(99))))
    filled = broadcast_from_rank0(torch.full((3, 2), float(launch.rank + 1)), mesh)
    result["broadcast_values"] = sorted(set(filled.flatten().tolist()))
    shutdown()
    result["shut_down"] = not dist.is_initialized()
    shutdown()  # idempotent
    return result


@pytest.mark.parametrize("world", sorted(LAYOUTS))
def test_spawned_ranks_share_rank0_randomness(world):
    outcomes = _spawn(world, randomness_worker)
    for rank, (ok, r) in enumerate(outcomes):
        assert ok, r
        assert r["backend"] == "gloo" and r["rank"] == rank and r["shut_down"]
        assert len(set(r["drawn_seeds"])) == 1, r["drawn_seeds"]  # one seed, drawn by rank 0
        assert r["given_seeds"] == [1234] * world
        assert r["noise_equal"] and r["broadcast_values"] == [1.0]
    # The drawn seed is fresh entropy, not a constant.
    assert outcomes[0][1]["drawn_seeds"][0] not in (0, 1234)


def failure_worker(launch, init_file, mode):
    mesh = init_distributed(ParallelConfig(cfg=2), launch, "cpu", timeout_s=TIMEOUT_S,
                            init_method=f"file://{init_file}")
    if launch.rank == 1:
        if mode == "crash":
            raise RuntimeError("simulated crash of rank 1")
        time.sleep(TIMEOUT_S + 3.0)  # hang: alive, but never joins the collective
        return None
    start = time.monotonic()
    try:
        with peer_failure_guard(mesh, TIMEOUT_S):
            dist.all_reduce(torch.ones(4), group=mesh.cfg_group)
    except PeerFailure as err:
        return {"waited": time.monotonic() - start, "message": str(err)}
    return {"waited": time.monotonic() - start, "message": "no error"}


@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_survivor_gets_a_clear_error_within_the_timeout(mode):
    (ok0, survivor), (ok1, failing) = _spawn(2, failure_worker, mode)
    assert ok0, survivor
    assert survivor["message"].startswith("rank 0 of 2 (cfg=2 x ring=1 x ulysses=1): a collective failed")
    assert "Another rank most likely crashed" in survivor["message"], survivor
    assert f"give up after {TIMEOUT_S:g} s" in survivor["message"]
    assert survivor["waited"] < TIMEOUT_S + SLACK_S, survivor
    if mode == "crash":
        assert not ok1 and "simulated crash of rank 1" in failing
    else:
        assert ok1
        assert survivor["waited"] >= TIMEOUT_S - 0.5, survivor  # only the timeout can end a hang
    print(mode, f"survivor failed after {survivor['waited']:.2f} s:", survivor["message"])


@pytest.mark.parametrize("error", [KeyError("own bug"), RuntimeError("shapes do not match"),
                                   ValueError("bad prompt")])
def test_guard_passes_local_errors_through(error):
    with pytest.raises(type(error), match=str(error).strip("'")):
        with peer_failure_guard(ParallelMesh.single(), 5.0):
            raise error


# --- a real torchrun launch ---------------------------------------------------------------------

# Each rank writes its own file: lines printed by two workers can interleave on torchrun's stdout.
TORCHRUN_SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    from wan_engine.env import LaunchEnv
    from wan_engine.parallel import ParallelConfig, init_distributed, shared_noise, shared_seed, shutdown
    torch.set_num_threads(1)
    launch = LaunchEnv.from_environ()
    mesh = init_distributed(ParallelConfig(ulysses=2), launch, "cpu", timeout_s=60, num_heads=2)
    seed = shared_seed(None, mesh)
    noise = shared_noise((4, 5), seed, mesh)
    with open(os.path.join(sys.argv[1], f"rank{launch.rank}.json"), "w") as f:
        json.dump({"rank": launch.rank, "world": launch.world_size, "local_rank": launch.local_rank,
                   "port": launch.master_port, "seed": seed, "noise": noise.sum().item(),
                   "sp_rank": mesh.sp_rank}, f)
    shutdown()
""")


def test_torchrun_launch_reads_its_environment(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--no-python", sys.executable, "-c", TORCHRUN_SCRIPT, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    places = [(r["rank"], r["world"], r["local_rank"], r["sp_rank"]) for r in rows]
    assert places == [(0, 2, 0, 0), (1, 2, 1, 1)]
    assert rows[0]["port"] is not None and rows[0]["port"] == rows[1]["port"]
    assert rows[0]["seed"] == rows[1]["seed"] and rows[0]["noise"] == rows[1]["noise"]
