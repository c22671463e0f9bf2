"""Cost per update of word-level KD against plain training, measured in one process.

Every configuration trains a fresh student (same seed) on the same batches, with the same
optimizer, for the same number of updates after the same warm-up: plain
``label_smoothed_cross_entropy``; online ``word_kd`` with the full teacher distribution and
with its top K; ``word_kd`` read from a teacher cache. Reported per configuration: seconds
per update (median), peak memory (GPU: ``max_memory_allocated``; CPU: the highest resident
set size seen during its updates, above what the process held before it), and both as
ratios to plain training.
"""

import logging
import os
import statistics
import threading
import time

import torch

logger = logging.getLogger(__name__)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, else sampled RSS."""

    def __init__(self, cuda):
        self.cuda = cuda
        self.peak = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = _rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
        self.used = self.peak - self.base
        return False


def _batches(task, subset, n, max_tokens, device):
    from evokd.core.inference import move_to_device

    itr = task.get_batch_iterator(
        task.dataset(subset), max_tokens=max_tokens, seed=1, required_batch_size_multiple=1
    ).next_epoch_itr(shuffle=True)
    out = []
    for sample in itr:
        if len(out) == n:
            break
        out.append(move_to_device(sample, device))
    if len(out) < n:
        from evokd.errors import EvokdError

        raise EvokdError(f"--updates {n}: the {subset} subset gives only {len(out)} batches")
    return out


def _config(data, arch, criterion_flags, extra):
    from evokd.core.runtime import parse_config

    argv = [data, "--arch", arch, "--task", "evokd_translation", "--optimizer", "adam"]
    argv += ["--lr", "5e-4", "--label-smoothing", "0.1", "--seed", "1", "--dropout", "0.1"]
    return parse_config(argv + list(criterion_flags) + list(extra))


def measure(task, cfg, teacher, batches, warmup, device):
    """Seconds per update (one per timed update) and peak memory of one configuration."""
    from fairseq import optim, utils

    utils.set_torch_seed(1)
    task.teacher = teacher
    model = task.build_model(cfg.model).to(device)
    criterion = task.build_criterion(cfg.criterion).to(device)  # checks a cache against K
    optimizer = optim.build_optimizer(cfg.optimizer, [p for p in model.parameters()])
    times = []
    cuda = device.type == "cuda"
    with PeakMemory(cuda) as memory:
        for i, sample in enumerate(batches):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            task.train_step(sample, model, criterion, optimizer, i)
            optimizer.step()
            optimizer.zero_grad()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times, memory.used


def run_bench(
    data, teacher_path, cache=None, arch="transformer_evokd_tiny_student", updates=20,
    warmup=3, max_tokens=4096, topk=8, cpu=False, extra=(),
):  # fmt: skip
    """Measure every configuration; returns a list of result rows (dicts)."""
    from evokd.core.inference import choose_device
    from evokd.teachers.cache import TeacherCache
    from evokd.teachers.live import LiveTeacher

    device = choose_device(cpu)
    kd = ["--criterion", "word_kd", "--kd-alpha", "0.5", "--teacher-path", teacher_path]
    configs = [
        ("plain", ["--criterion", "label_smoothed_cross_entropy"], None),
        (f"cached top-{topk}", kd + ["--kd-topk", str(topk)], "cache"),
        ("online full", kd + ["--kd-topk", "0"], "live"),
        (f"online top-{topk}", kd + ["--kd-topk", str(topk)], "live"),
    ]
    if cache is None:
        configs = [c for c in configs if c[2] != "cache"]
    base = _config(data, arch, configs[0][1], extra)
    from fairseq import tasks

    task = tasks.setup_task(base.task)
    task.load_dataset(base.dataset.train_subset)
    batches = _batches(task, base.dataset.train_subset, warmup + updates, max_tokens, device)
    tokens = statistics.mean(int(b["ntokens"]) for b in batches)
    live = None
    rows = []
    for name, flags, source in configs:
        cfg = _config(data, arch, flags, extra)
        if source == "live" and live is None:
            live = LiveTeacher(teacher_path, task)
        teacher = {"live": live, "cache": None, None: None}[source]
        if source == "cache":
            teacher = TeacherCache(cache, pad=task.target_dictionary.pad())
        logger.info("bench: %s, %d updates after %d warm-up", name, updates, warmup)
        times, memory = measure(task, cfg, teacher, batches, warmup, device)
        rows.append(
            {
                "config": name,
                "seconds_per_update": statistics.median(times),
                "mean_seconds_per_update": statistics.mean(times),
                "peak_memory_bytes": memory,
            }
        )
    plain = rows[0]
    for row in rows:
        row["time_ratio"] = row["seconds_per_update"] / plain["seconds_per_update"]
        row["memory_ratio"] = row["peak_memory_bytes"] / max(plain["peak_memory_bytes"], 1)
    meta = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "arch": arch,
        "teacher": teacher_path,
        "updates": updates,
        "warmup": warmup,
        "target_tokens_per_batch": tokens,
        "topk": topk,
        "torch": torch.__version__,
    }
    return rows, meta


def table(rows):
    lines = [
        "| configuration | s / update | x plain | peak memory (MiB) | x plain |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['seconds_per_update']:.4f} | {r['time_ratio']:.2f} | "
            f"{r['peak_memory_bytes'] / 2**20:.1f} | {r['memory_ratio']:.2f} |"
        )
    return "\n".join(lines)
