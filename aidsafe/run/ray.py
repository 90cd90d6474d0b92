"""`--engine ray`: the same stage spread over Ray workers, on one machine or a cluster.

The driver (the `aidsafe` process) streams the input, skips finished rows, hands each row to a
worker and writes what comes back to the run directory, as a local run does: the ledgers are
written by one process only, so nothing is merged afterwards and `export`, `grade` and `compare`
see the usual layout. Each worker is a Ray actor holding its own model clients (an OpenAI-
compatible endpoint, or its own in-process vLLM engine on its GPU) and the recipe's graph, and
runs up to `concurrency` rows at once on its own event loop.

Each worker appends the answers it gets to its own file of the run's response log. A worker that
dies (killed, out of memory, node lost) is restarted by Ray, and the driver sends each row it
had in flight again, with the answers the dead worker logged for it: where the run directory is
on storage the driver shares (one machine, or a shared filesystem), the row continues from its
last answered call, in this run, and no finished call is sent again; elsewhere it starts from
the beginning. A row whose worker keeps dying is recorded as failed (`worker_lost`), so no row
is lost either way; `--retry-failed` runs it again."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aidsafe.config import RunConfig
from aidsafe.errors import UserError
from aidsafe.inputs import PromptRow
from aidsafe.models.replay import ResponseLog
from aidsafe.policies import PolicySet
from aidsafe.recipes.base import Recipe
from aidsafe.records import Reason, failure_record
from aidsafe.run.outcome import Outcome, item_outcome, thread_id

INSTALL_HINT = "install it with: pip install 'aidsafe[ray]'"
# Times the driver sends again a row whose worker died before it is recorded as `worker_lost`.
ROW_RETRIES = 3


def check_ray_available() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UserError(f"--engine ray needs the ray package; {INSTALL_HINT}")


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail at once, not after minutes of Ray's own retries, when nothing answers at a
    `host:port` or `ray://host:port` cluster address (`auto` is left to Ray)."""
    if address is None or address == "auto":
        return
    host_port = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address}: expected auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise UserError(
            f"--ray-address {address}: nothing answers at {host}:{port} ({error}); start the "
            "cluster (`ray start --head`) or fix the address"
        ) from error


class RecipeWorker:
    """One Ray actor: a recipe's graph over its own model clients (see the module doc)."""

    def __init__(
        self,
        recipe: Recipe,
        config_data: dict[str, Any],
        policies: PolicySet,
        digest: str,
        scripted: dict[str, Any],
        log: tuple[str, str, str] | None,
        keys: dict[str, str],
    ) -> None:
        from aidsafe.agents.context import build_context
        from aidsafe.models import scripted as scripted_models

        # the API keys arrive as an argument, not through Ray's runtime_env, which writes the
        # environment it sets to its agent's log in clear
        os.environ.update(keys)
        for name, model in scripted.items():  # test doubles travel with the run
            scripted_models.register(name, model)
        self.recipe = recipe
        self.digest = digest
        config = RunConfig.model_validate(config_data)
        self.ctx = build_context(config, recipe.roles(config), policies)
        self.graph = recipe.graph().compile(name=recipe.name)
        # this worker's own file of the run's response log (where the run directory is shared
        # storage, as on one machine, the driver serves its answers on the next run)
        self.log = ResponseLog(Path(log[0]), log[1], log[2]) if log is not None else None

    def pid(self) -> int:
        return os.getpid()

    async def run(self, item: PromptRow, answers: dict[str, Any] | None) -> Outcome:
        """One item, served first from `answers` (its logged ones, sent by the driver)."""
        return await item_outcome(
            self.recipe, self.graph, self.ctx, item, self.digest, answers, self.log
        )


def worker_resources(config: RunConfig, roles: list[str]) -> dict[str, float]:
    """What one worker asks Ray for: a CPU (its event loop), and the GPUs of its own vLLM
    engine when a role runs on one."""
    gpus = max(
        (
            config.model_for(role).tensor_parallel_size
            for role in roles
            if config.model_for(role).backend == "vllm"
        ),
        default=0,
    )
    return {"num_cpus": 1, "num_gpus": gpus}


def start_ray(address: str | None, workers: int | None) -> bool:
    """Join the cluster at `address`, or start a local Ray instance (which may run more workers
    than there are cores); False when this process is already connected."""
    check_ray_available()
    import ray

    if ray.is_initialized():
        return False
    try:
        if address is None:
            wanted = max(workers or 0, os.cpu_count() or 1)
            ray.init(
                num_cpus=wanted,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(f"--ray-address {address}: cannot join Ray ({error})") from error
    return True


@contextlib.contextmanager
def ray_session(address: str | None, workers: int | None) -> Iterator[None]:
    """Ray for the length of a command: its phases (rows, then DPO pairs) share one instance."""
    import ray

    started = start_ray(address, workers)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def worker_env(config: RunConfig, roles: list[str]) -> dict[str, str]:
    """The API keys the workers' models read, from the driver's environment: workers on other
    nodes do not share it."""
    names = {config.model_for(role).api_key_env for role in roles}
    return {name: os.environ[name] for name in sorted(names) if name in os.environ}


def split_rate_limits(data: dict[str, Any], workers: int) -> dict[str, Any]:
    """A config whose rate limits are each worker's share: the workers together keep to them."""
    for model in data.get("models", {}).values():
        for limit in ("requests_per_minute", "tokens_per_minute"):
            if model.get(limit):
                model[limit] = model[limit] / workers
    return data


class RayPool:
    """Ray actors running one recipe's items; `submit` sends an item to the least busy worker."""

    def __init__(
        self,
        recipe: Recipe,
        config: RunConfig,
        policies: PolicySet,
        digest: str,
        log: ResponseLog | None,
        *,
        address: str | None = None,
        workers: int | None = None,
    ) -> None:
        check_ray_available()
        import ray

        from aidsafe.models.scripted import registered

        roles = list(recipe.roles(config))
        resources = worker_resources(config, roles)
        self.started_ray = start_ray(address, workers)
        cluster = ray.cluster_resources()
        if workers is None:
            if resources["num_gpus"]:
                workers = int(cluster.get("GPU", 0) // resources["num_gpus"])
            else:
                workers = int(cluster.get("CPU", 1))
        if workers < 1 or (
            resources["num_gpus"] and workers * resources["num_gpus"] > cluster.get("GPU", 0)
        ):
            self.close()
            raise UserError(
                f"--workers {workers}: each worker needs {resources['num_gpus']:g} GPU(s) for its "
                f"vLLM engine and the Ray cluster has {cluster.get('GPU', 0):g}"
            )
        actor = ray.remote(RecipeWorker).options(
            max_concurrency=config.concurrency,
            max_restarts=-1,
            max_task_retries=0,  # the driver sends a lost row again itself, with its answers
            **resources,
        )
        data = split_rate_limits(config.model_dump(mode="json"), workers)
        scripted = registered(
            config.model_for(role).model or ""
            for role in roles
            if config.model_for(role).backend == "scripted"
        )
        # the workers' log files, found again by this group name when a worker dies
        self.group = f"ray{uuid.uuid4().hex[:8]}"
        self.log = log
        self.digest = digest
        where = (str(log.directory), log.prefix, self.group) if log is not None else None
        keys = worker_env(config, roles)
        self.workers: list[Any] = [
            actor.remote(recipe, data, policies, digest, scripted, where, keys)
            for _ in range(workers)
        ]
        self._load = [0] * len(self.workers)  # items in flight per worker
        self.recipe = recipe

    @property
    def size(self) -> int:
        return len(self.workers)

    def pids(self) -> list[int]:
        import ray

        return list(ray.get([worker.pid.remote() for worker in self.workers]))

    async def submit(self, item: PromptRow, answers: dict[str, Any] | None = None) -> Outcome:
        """The worker's Outcome for `item`. A row whose worker died goes again, to a live or
        restarted worker, with what the dead one logged; a worker lost for good, or an error
        the worker could not turn into a row, gives a failure record: the run goes on."""
        from ray.exceptions import RayActorError, RayTaskError

        for _ in range(ROW_RETRIES + 1):
            # the least busy worker: no item queues behind others on one worker while another
            # has a free slot, so a worker's death takes only the items it was running
            worker = min(range(len(self.workers)), key=self._load.__getitem__)
            self._load[worker] += 1
            try:
                return await self.workers[worker].run.remote(item, answers)
            except RayActorError as error:
                lost = error
                answers = self.logged(item, answers)
            except RayTaskError as error:
                detail = f"the Ray worker failed on this row: {str(error).splitlines()[0][:500]}"
                failure = failure_record(
                    item.id, item.index, item.prompt, "worker", Reason.INTERNAL_ERROR, detail
                )
                return Outcome(False, 0, self.recipe.failed(item, failure))
            finally:
                self._load[worker] -= 1
        detail = f"the Ray worker died {ROW_RETRIES + 1} times running this row: {lost}"
        failure = failure_record(
            item.id, item.index, item.prompt, "worker", Reason.WORKER_LOST, detail
        )
        return Outcome(False, 0, self.recipe.failed(item, failure))

    def logged(self, item: PromptRow, answers: dict[str, Any] | None) -> dict[str, Any] | None:
        """The answers a row had, with those this pool's workers logged for it since (a dead
        worker's file is read from the run directory, where it is shared storage)."""
        if self.log is None:
            return answers
        thread = thread_id(self.recipe, self.digest, item)
        fresh = self.log.load(thread.__eq__, self.group).get(thread, {})
        return {**(answers or {}), **fresh} if fresh else answers

    def close(self) -> None:
        import ray

        for worker in getattr(self, "workers", []):
            ray.kill(worker)
        if self.started_ray:
            ray.shutdown()
