"""Several machines: the same chain stage started on two "nodes" of one process each.

Both run on this machine (torchrun's static rendezvous on 127.0.0.1, gloo on the CPU),
as two machines would run the command the README gives: ``NNODES=2 NODE_RANK=r
MASTER_ADDR=... evokd chain --plan PLAN --stage s --gpus 1``. Each node has its own
``--checkpoints`` folder (the disk of its machine), so the test can tell who wrote what.
The stage reads its teacher from a cache (``kd: {cache: {topk: 4}}``); each node builds
that cache in its own folder from the same teacher file before training starts.
"""

import json
import math
import os
import socket
import subprocess

from tests import utils

EPOCHS = 2
TRAIN_PAIRS = 200  # the data_bin fixture's training set
BATCH = 25  # pairs per batch: 8 batches, an even number, so no rank runs out (see below)
STAGE = {
    "name": "s",
    "arch": "transformer_evokd_tiny_student",
    "max_epoch": EPOCHS,
    "kd": {"cache": {"topk": 4}},
}
TRAIN = {
    "seed": 1, "optimizer": "adam", "lr": 1e-3, "max-tokens": 8000,
    "batch-size": BATCH, "required-batch-size-multiple": 1,
    "criterion": "label_smoothed_cross_entropy", "label-smoothing": 0.1,
    "num-workers": 0, "log-format": "json", "log-interval": 1,
    "encoder-layers": 2, "decoder-layers": 2, "encoder-embed-dim": 32,
    "decoder-embed-dim": 32, "encoder-ffn-embed-dim": 64, "decoder-ffn-embed-dim": 64,
    "encoder-attention-heads": 2, "decoder-attention-heads": 2,
}  # fmt: skip


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(root, plan, rank, port):
    env = {
        **os.environ,
        "PATH": utils.PATH,
        "PYTHONWARNINGS": "ignore",
        "NNODES": "2",
        "NODE_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
    }
    cmd = utils.fairseq_script("evokd") + ["chain", "--plan", str(plan), "--stage", "s"]
    cmd += ["--gpus", "1", "--master-port", str(port), "--no-evaluate"]
    cmd += ["--checkpoints", str(root / f"node{rank}")]
    return subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_two_nodes_train_one_stage_from_a_cache(data_bin, teacher_ckpt, tmp_path):
    plan = tmp_path / "nodes.yaml"
    stage = dict(STAGE, teacher=str(teacher_ckpt))
    spec = {"name": "nodes", "data": str(data_bin), "train": TRAIN, "stages": [stage]}
    plan.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    port = _free_port()
    nodes = [_start_node(tmp_path, plan, rank, port) for rank in (0, 1)]
    outputs = []
    for node in nodes:
        try:
            out, _ = node.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise
        outputs.append(out)
    for rank, (node, out) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank} failed:\n{out[-4000:]}"
    folders = [tmp_path / f"node{rank}" / "nodes" / "s" for rank in (0, 1)]
    logs = [(folder / "train.log").read_text() for folder in folders]

    # each node ran torchrun as one node of two, joined one process group and read the cache
    for rank, log in enumerate(logs):
        assert f"--nnodes 2 --node-rank {rank} --master-addr 127.0.0.1" in log
        assert "--distributed-world-size 2" in log and "--distributed-backend gloo" in log
        assert f"distributed init (rank {rank})" in log
        assert f"--teacher-cache {tmp_path / f'node{rank}' / 'nodes' / 'caches'}/" in log
        assert "frozen" not in log  # the live teacher was never loaded
    caches = [list((tmp_path / f"node{r}" / "nodes" / "caches").iterdir()) for r in (0, 1)]
    fingerprints = [json.loads((c / "cache.json").read_text())["fingerprint"] for (c,) in caches]
    assert fingerprints[0] == fingerprints[1]  # both nodes read the same teacher outputs

    # fairseq logs on rank 0 only, each update's figures summed over the ranks
    records = utils.parse_json_log(logs[0])
    inner = [r for r in records if r["_tag"] == "train_inner"]
    assert inner and all(float(r["kd_loss"]) > 0 for r in inner)
    # both ranks stepped: every update holds a batch of BATCH pairs from each rank
    assert {float(r["bsz"]) for r in inner} == {2 * BATCH}
    # every training pair seen once per epoch: the target tokens of each epoch's updates,
    # summed over both ranks, are those of the training set (each rank trained on its own
    # shard: the same shard twice, or all of the data on each rank, would differ)
    per_update = math.ceil(TRAIN_PAIRS / BATCH / 2)
    assert [int(r["num_updates"]) for r in inner] == list(range(1, EPOCHS * per_update + 1))
    for epoch in range(1, EPOCHS + 1):
        tokens = sum(int(float(r["wpb"])) for r in inner if int(r["epoch"]) == epoch)
        assert tokens == _target_tokens(data_bin), epoch

    # only rank 0 wrote: its stage record and checkpoints; node 1's folder holds its log only
    record = json.loads((folders[0] / "evokd_stage.json").read_text())
    assert record["finished"] and record["epochs"] == EPOCHS
    assert record["updates"] == EPOCHS * per_update
    assert "--node-rank 0" in " ".join(record["command"])
    for name in ("checkpoint_best.pt", "checkpoint_last.pt", f"checkpoint{EPOCHS}.pt"):
        assert (folders[0] / name).is_file()
    written = sorted(p.name for p in folders[1].iterdir() if not p.name.startswith("."))
    assert written == ["train.log"], written
    assert not list((tmp_path / "node1").rglob("*.pt"))
    assert not list((tmp_path / "node1").rglob("evokd_stage.json"))


def _target_tokens(data_bin):
    """Target tokens (end of sentence included) of the training set, as fairseq counts them."""
    from fairseq.data import data_utils

    target = data_utils.load_indexed_dataset(str(data_bin / "train.de-en.en"), None)
    assert len(target) == TRAIN_PAIRS
    return int(sum(target.sizes))


def test_uneven_shards_with_a_cache(data_bin, teacher_ckpt, tmp_path):
    """5 batches on 2 processes: rank 1 has one batch fewer in every epoch."""
    plan = tmp_path / "uneven.yaml"
    stage = dict(STAGE, teacher=str(teacher_ckpt), max_epoch=1)
    train = dict(TRAIN, **{"batch-size": 40})
    spec = {"name": "uneven", "data": str(data_bin), "train": train, "stages": [stage]}
    plan.write_text(json.dumps(spec, indent=1))
    argv = ["chain", "--plan", plan, "--no-evaluate", "--gpus", "2", "--master-port", _free_port()]
    code, out = utils.evokd_in_process(argv, cwd=tmp_path, check=False)
    log = (tmp_path / "checkpoints" / "uneven" / "s" / "train.log").read_text()
    assert code == 0, log[-3000:]
