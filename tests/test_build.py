"""The chunked builder's kill-and-resume protocol, once, with a fake compute function.

A kill is an exception raised at a named point (``tests.utils.interrupt_on_call``): the
builder cleans nothing up on its way out, so what it leaves is what a SIGKILL there leaves.
Every resumed build must equal an uninterrupted one and compute only the missing chunks.
"""

import os
import random
from pathlib import Path

import numpy as np
import pytest

from evokd import files
from evokd.core import build as cb
from evokd.errors import EvokdError

SIZES = [5, 3, 5, 1, 3, 2, 4, 1, 2, 6, 3]  # source lengths of 11 examples
ORDER = [3, 7, 5, 8, 1, 4, 10, 6, 0, 2, 9]  # by length, ties by id (sorted by hand)
EXPECTED = "".join(f"{i} {10 * i + 7}\n" for i in range(len(SIZES)))  # the output, in id order
COMPUTED = []  # the chunks computed in this process, by their first id


def fake_compute(batches):
    ids = [i for batch in batches for i in batch]
    COMPUTED.append(ids[0])
    return ids, {"values": [10 * i + 7 for i in ids], "pid": os.getpid()}


def open_fake(rank):
    return fake_compute


def write_values(folder, payload):
    np.save(folder / "values.npy", np.asarray(payload["values"], dtype=np.int64))
    (folder / "pid").write_text(str(payload["pid"]))


def merge_values(dest, folders):
    rows = {}
    for folder in folders:
        rows.update(zip(np.load(folder / "ids.npy").tolist(), np.load(folder / "values.npy")))
    dest.write_text("".join(f"{i} {rows[i]}\n" for i in sorted(rows)))
    return len(rows)


def make(out, chunk_size=4, settings=None):
    """A build of 11 examples in batches of 2 (6 batches), grouped into chunks."""
    chunks = cb.plan_chunks(cb.cut(cb.length_order(SIZES), 2), chunk_size)
    settings = {"k": 1} if settings is None else settings
    return cb.ChunkedBuild(out, chunks, settings, chunk_size, write_values, "test build")


def run(out, chunk_size=4, processes=1, settings=None):
    """The whole build: what a command does (a finished output is left as it is)."""
    build = make(out, chunk_size, settings)
    if out.exists():
        build.clean()
        return None
    build.start()
    build.run(open_fake, (), processes, desc="fake")
    return build.finish(merge_values)


def killed(monkeypatch, out, module, name, n, **kwargs):
    """``run(out)`` stopped at the ``n``-th call of ``module.name``, before it runs."""
    # imported here: the build's worker processes import this module, and tests.utils
    # would have them import fairseq, which they do not use
    from tests import utils

    with monkeypatch.context() as patch:
        utils.interrupt_on_call(patch, module, name, n)
        with pytest.raises(KeyboardInterrupt):
            run(out, **kwargs)


def merge_cut_short(dest, folders):
    dest.write_text("0 7\n")  # half the output, then the kill
    raise KeyboardInterrupt


def test_the_plan():
    chunks = make(Path("x")).chunks
    assert cb.length_order(SIZES).tolist() == ORDER
    assert chunks == [[[3, 7], [5, 8]], [[1, 4], [10, 6]], [[0, 2], [9]]]  # 2 batches a chunk
    assert cb.plan_chunks([[1, 2, 3], [4], [5, 6]], 2) == [[[1, 2, 3]], [[4]], [[5, 6]]]


def test_the_plan_does_not_depend_on_the_global_rng():
    plans = []
    for seed in (0, 1):
        np.random.seed(seed)
        random.seed(seed)
        plans.append(make(Path("x")).record)
    assert plans[0] == plans[1]


# (module, function, call, chunks computed on resume); 3 chunks in all
KILL_POINTS = [
    (cb, "save_chunk", 2, 2),  # after the first chunk is written
    (files, "publish", 1, 3),  # in the middle of the first chunk: written, not renamed
    (files, "publish", 3, 1),  # in the middle of the last chunk
    (files, "publish", 4, 0),  # after the merge, before the output is published
    (cb, "remove", 2, 0),  # after the output is published, before OUT.partial is removed
]


@pytest.mark.parametrize("module, name, n, resumed", KILL_POINTS)
def test_killed_build_resumes_to_the_same_output(tmp_path, monkeypatch, module, name, n, resumed):
    out, partial = tmp_path / "out.txt", tmp_path / "out.txt.partial"
    killed(monkeypatch, out, module, name, n)
    assert out.exists() == (name == "remove")  # complete, or not there
    if out.exists():
        assert out.read_text() == EXPECTED and partial.is_dir()
    COMPUTED.clear()
    assert run(out) in (11, None)
    assert len(COMPUTED) == resumed
    assert out.read_text() == EXPECTED
    assert not partial.exists()


def test_killed_during_the_merge(tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    build = make(out)
    build.start()
    build.run(open_fake)
    with pytest.raises(KeyboardInterrupt):
        build.finish(merge_cut_short)
    assert not out.exists() and (build.partial / "out.txt").exists()
    COMPUTED.clear()
    assert run(out) == 11 and COMPUTED == []
    assert out.read_text() == EXPECTED


def test_twice_killed(tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    killed(monkeypatch, out, cb, "save_chunk", 2)
    killed(monkeypatch, out, files, "publish", 1)  # the second chunk half there
    assert (files.partial_path(out) / "chunks" / "chunk00001.tmp" / "values.npy").is_file()
    COMPUTED.clear()
    assert run(out) == 11
    assert len(COMPUTED) == 2
    assert out.read_text() == EXPECTED


def test_resume_with_another_chunk_size_or_settings_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    killed(monkeypatch, out, cb, "save_chunk", 2)
    partial = files.partial_path(out)
    before = {p: p.read_bytes() for p in partial.rglob("*") if p.is_file()}
    where = r"out.txt.partial: an unfinished test build: made with other settings"
    with pytest.raises(EvokdError, match=where + r" \(plan.chunk_size: 4 there, 6 now; plan.parts"):
        run(out, chunk_size=6)
    with pytest.raises(EvokdError, match=r"made with other settings \(k: 1 there, 2 now\)"):
        run(out, settings={"k": 2})
    assert {p: p.read_bytes() for p in partial.rglob("*") if p.is_file()} == before


def test_finished_chunk_of_another_plan_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    killed(monkeypatch, out, cb, "save_chunk", 2)
    ids = files.partial_path(out) / "chunks" / "chunk00000" / "ids.npy"
    np.save(ids, np.load(ids) + 1)  # as another order would have cut it
    with pytest.raises(EvokdError, match="chunk00000: holds other examples than the build plan"):
        run(out)


def test_chunks_missing_or_doubling_an_example_are_refused(tmp_path):
    out = tmp_path / "out.txt"
    build = make(out)
    build.start()
    build.run(open_fake)
    first = build.chunk_path(0) / "ids.npy"
    np.save(build.chunk_path(1) / "ids.npy", np.load(first))  # 1, 4, 10, 6 gone; 3, 7, 5, 8 twice
    with pytest.raises(
        EvokdError, match=r"incomplete \(4 examples missing \(e.g. \[1, 4, 6\]\); 4 more than once"
    ):
        build.finish(merge_values)
    (build.chunk_path(2) / "ids.npy").unlink()
    build.chunk_path(2).rename(build.partial / "elsewhere")
    with pytest.raises(EvokdError, match=r"chunks \['chunk00002'\] were not written"):
        build.finish(merge_values)
    assert not out.exists()


def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    assert run(one) == 11
    build = make(two)
    build.start()
    build.run(open_fake, (), processes=2)
    pids = [int((build.chunk_path(c) / "pid").read_text()) for c in range(3)]
    assert pids[0] == pids[2] != pids[1] and os.getpid() not in pids  # chunk c in process c % 2
    assert build.finish(merge_values) == 11
    assert two.read_bytes() == one.read_bytes()


def test_a_finished_output_is_left_alone(tmp_path):
    out = tmp_path / "out.txt"
    run(out)
    COMPUTED.clear()
    assert run(out, chunk_size=6) is None and COMPUTED == []
    assert out.read_text() == EXPECTED
