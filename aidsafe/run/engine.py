"""Where items run when not in this process: Ray workers (see aidsafe.run.ray)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aidsafe.config import RunConfig
from aidsafe.models.replay import ResponseLog
from aidsafe.policies import PolicySet
from aidsafe.recipes.base import Recipe

if TYPE_CHECKING:
    from aidsafe.run.ray import RayPool


@dataclass(frozen=True)
class Engine:
    """Ray workers: a cluster at `address` (None: a local Ray instance), `workers` of them
    (None: one per CPU, or per GPU with the vllm backend)."""

    address: str | None = None
    workers: int | None = None

    def pool(
        self,
        recipe: Recipe,
        config: RunConfig,
        policies: PolicySet,
        digest: str,
        log: ResponseLog | None,
    ) -> RayPool:
        from aidsafe.run.ray import RayPool

        return RayPool(
            recipe, config, policies, digest, log, address=self.address, workers=self.workers
        )

    def session(self) -> contextlib.AbstractContextManager[Any]:
        """Ray for the length of a command, shared by its stages."""
        from aidsafe.run.ray import ray_session

        return ray_session(self.address, self.workers)

    @staticmethod
    def check(address: str | None) -> None:
        from aidsafe.run.ray import check_address, check_ray_available

        check_ray_available()
        check_address(address)
