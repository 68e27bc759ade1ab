"""Where self-edit evaluations run: in this process (default), in worker processes on this machine, or on
long-lived Ray actors.

All executors form the same job groups (inner_loop.group_jobs) and each group is evaluated whole by one
evaluator, so for the same seeds they return the same results (up to the float rounding of a different
torch thread count). Worker processes and Ray actors each load the base model once and then serve groups
for the whole run.

Why worker processes on one machine (`--executor processes`): a training step of a small model on a CPU
is mostly many mid-sized ops, whose per-op cost barely shrinks with a second thread. Measured on the
2-core development machine (docs/RESULTS.md, session 7): two 1-thread processes trained 1.36x the
self-edits per second of one 2-thread process.

On a cluster: start Ray (`ray start --head` on one node, `ray start --address HEAD:6379` on the
others), then run any command with `--executor ray --ray-address HEAD:6379`; `--ray-actors N` sets
how many model replicas serve jobs (give each a GPU with `--ray-gpus-per-actor 1`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

from .engine import GenerationConfig
from .inner_loop import EvaluatorSpec, Job, JobResult, SelfEditEvaluator, group_jobs


class LocalExecutor:
    def __init__(self, spec: EvaluatorSpec, progress: bool = True):
        self.evaluator = SelfEditEvaluator(spec, progress=progress)
        self.n_slots = spec.n_slots

    @property
    def engine(self):
        return self.evaluator.engine

    def sample_self_edits(self, contexts: Sequence[Any], k: int, cfg: GenerationConfig, seed: int):
        return self.evaluator.sample_self_edits(contexts, k, cfg, seed)

    def sample_many(self, calls: Sequence[tuple]) -> Iterator[tuple[list[list[str]], float, int]]:
        """sample_self_edits(*call) for each call, yielded in order (one by one here)."""
        for call in calls:
            yield self.evaluator.sample_self_edits(*call)

    def run(self, jobs: Sequence[Job]) -> Iterator[list[JobResult]]:
        """Yields each group's results as soon as it is done (so callers can log them at once)."""
        for group in group_jobs(jobs, self.n_slots, self.evaluator.spec.training_steps):
            yield self.evaluator.run(group)

    def close(self) -> None:
        pass


class ProcessExecutor:
    """Worker processes on this machine, each holding a SelfEditEvaluator and using cores // workers torch
    threads; job groups and sampling calls are spread over them. A batch of one task (one sampling call,
    one job group) runs on all the cores instead of leaving the other workers' cores idle. Started with
    `spawn` (a forked torch with threads already running can deadlock), so a script using it from Python
    must guard its entry point with `if __name__ == "__main__":` (the `seal` command does)."""

    def __init__(self, spec: EvaluatorSpec, workers: int = 2, progress: bool = True, threads: int | None = None):
        """`threads`: torch threads of every task (default: cores // workers, and all cores for a lone task)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.threads, self.all_threads = max(1, cores // workers), cores
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            self.threads = self.all_threads = threads
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker, initargs=(spec,))
        self.spec, self.n_slots = spec, spec.n_slots
        self.progress = progress  # workers show no bars; sampling calls get one here (evaluations: run_jobs)

    def _threads(self, n_tasks: int) -> int:
        return self.all_threads if n_tasks == 1 else self.threads

    def sample_self_edits(self, contexts: Sequence[Any], k: int, cfg: GenerationConfig, seed: int):
        return self.pool.submit(_worker_sample, (list(contexts), k, cfg, seed), self._threads(1)).result()

    def sample_many(self, calls: Sequence[tuple]) -> Iterator[tuple[list[list[str]], float, int]]:
        """All calls submitted at once, results yielded in call order."""
        from tqdm.auto import tqdm

        futures = [self.pool.submit(_worker_sample, (list(c[0]), *c[1:]), self._threads(len(calls))) for c in calls]
        try:
            for f in tqdm(futures, desc="self-edit sampling calls", disable=not self.progress or len(calls) < 2):
                yield f.result()
        finally:  # (a consumer like zip() may never resume the generator after its last result: not an abort)
            if not all(f.done() for f in futures):
                self._abort(futures)

    def run(self, jobs: Sequence[Job]) -> Iterator[list[JobResult]]:
        from concurrent.futures import as_completed

        groups = group_jobs(jobs, self.n_slots, self.spec.training_steps)
        futures = [self.pool.submit(_worker_run, group, self._threads(len(groups))) for group in groups]
        try:
            for f in as_completed(futures):  # results are keyed by job, so order is irrelevant
                yield f.result()
        finally:
            if not all(f.done() for f in futures):
                self._abort(futures)

    def _abort(self, futures) -> None:
        """The caller stopped early (an error, Ctrl-C): stop the workers now. Otherwise the queued tasks (and
        those already handed to a worker, which cannot be cancelled) run on for minutes and hold up exit.
        Finished results were recorded by the caller, so a resumed run loses nothing."""
        for f in futures:
            f.cancel()
        for proc in list((getattr(self.pool, "_processes", None) or {}).values()):  # no public API before Python 3.14
            proc.terminate()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


_worker_evaluator: SelfEditEvaluator | None = None  # one per worker process (ProcessExecutor)


def _init_worker(spec: EvaluatorSpec) -> None:
    global _worker_evaluator
    _worker_evaluator = SelfEditEvaluator(spec, progress=False)


def _worker_run(jobs, threads: int):
    import torch

    torch.set_num_threads(threads)
    return _worker_evaluator.run(jobs)


def _worker_sample(call, threads: int):
    import torch

    torch.set_num_threads(threads)
    return _worker_evaluator.sample_self_edits(*call)


class RayExecutor:
    """Ray actors each holding a SelfEditEvaluator; groups are spread over them."""

    def __init__(self, spec: EvaluatorSpec, address: str | None = None, n_actors: int = 2,
                 gpus_per_actor: float = 0.0, cpus_per_actor: float = 1.0, progress: bool = True):
        try:
            import ray
        except ImportError as e:
            raise RuntimeError("the Ray executor needs Ray: pip install 'seal-lm[ray]'") from e
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        actor_cls = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)(_EvaluatorActor)
        self.actors = [actor_cls.remote(spec) for _ in range(n_actors)]
        self.spec, self.n_slots = spec, spec.n_slots
        self.progress = progress

    def sample_self_edits(self, contexts: Sequence[Any], k: int, cfg: GenerationConfig, seed: int):
        return self.ray.get(self.actors[0].sample_self_edits.remote(list(contexts), k, cfg, seed))

    def sample_many(self, calls: Sequence[tuple]) -> Iterator[tuple[list[list[str]], float, int]]:
        """Calls spread over the actors, results yielded in call order."""
        from ray.util import ActorPool
        from tqdm.auto import tqdm

        results = ActorPool(self.actors).map(lambda a, c: a.sample_self_edits.remote(list(c[0]), *c[1:]), calls)
        yield from tqdm(results, total=len(calls), desc="self-edit sampling calls", disable=not self.progress or len(calls) < 2)

    def run(self, jobs: Sequence[Job]) -> Iterator[list[JobResult]]:
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        # map_unordered yields finished groups first; results are keyed by job, so order is irrelevant.
        yield from pool.map_unordered(lambda a, g: a.run.remote(g), group_jobs(jobs, self.n_slots, self.spec.training_steps))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


class _EvaluatorActor:
    def __init__(self, spec: EvaluatorSpec):
        import torch

        torch.set_num_threads(1)
        self.evaluator = SelfEditEvaluator(spec, progress=False)

    def run(self, jobs):
        return self.evaluator.run(jobs)

    def sample_self_edits(self, contexts, k, cfg, seed):
        return self.evaluator.sample_self_edits(contexts, k, cfg, seed)


def make_executor(spec: EvaluatorSpec, executor: str = "local", ray_address: str | None = None,
                  ray_actors: int = 2, ray_gpus_per_actor: float = 0.0, progress: bool = True, workers: int = 2):
    if executor == "local":
        return LocalExecutor(spec, progress=progress)
    if executor == "processes":
        return ProcessExecutor(spec, workers=workers, progress=progress)
    if executor == "ray":
        return RayExecutor(spec, address=ray_address, n_actors=ray_actors, gpus_per_actor=ray_gpus_per_actor,
                           progress=progress)
    raise ValueError(f"unknown executor {executor!r}: choose 'local', 'processes' or 'ray'")


def run_jobs(executor, jobs: Sequence[Job], on_result: Callable[[JobResult], None] | None = None,
             progress: bool = True, desc: str = "self-edit evaluations") -> dict[str, JobResult]:
    """Run jobs on an executor with a progress bar, calling on_result as each one finishes."""
    from tqdm.auto import tqdm

    out: dict[str, JobResult] = {}
    with tqdm(total=len(jobs), desc=desc, disable=not progress or not jobs) as bar:
        for group in executor.run(jobs):
            for r in group:
                out[r.key] = r
                if on_result:
                    on_result(r)
            bar.update(len(group))
    return out
