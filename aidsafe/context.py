"""Everything a recipe graph needs at run time, resolved once from a RunConfig."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel

from aidsafe.config import (
    BeliefConfig,
    DeliberationConfig,
    JudgeConfig,
    ModelConfig,
    RunConfig,
    UnsafeChainConfig,
)
from aidsafe.models import build_chat_model
from aidsafe.models.structured import call_structured
from aidsafe.policies import PolicySet, load_policies
from aidsafe.prompts import RolePrompt, load_prompts, render_messages
from aidsafe.schemas import RecipeSchemas, schemas_for

T = TypeVar("T", bound=BaseModel)


@dataclass
class RecipeContext:
    policies: PolicySet
    policy_block: str
    prompts: dict[str, RolePrompt]
    schemas: RecipeSchemas
    model_configs: dict[str, ModelConfig]
    models: dict[str, BaseChatModel]
    deliberation: DeliberationConfig
    belief: BeliefConfig
    judge: JudgeConfig
    unsafechain: UnsafeChainConfig
    repair_attempts: int
    recipe: str

    async def ask(
        self,
        role: str,
        stage: str,
        schema: type[T],
        check: Callable[[T], list[str]] | None = None,
        **values: Any,
    ) -> tuple[T, list[dict[str, Any]]]:
        """One structured call of `role`: render its prompt, call, validate, repair."""
        prompt = self.prompts[role.split("_")[0]]
        messages = render_messages(self.policy_block, prompt, **values)
        answer, records = await call_structured(
            self.models[role],
            self.model_configs[role],
            messages,
            schema,
            role=role,
            stage=stage,
            repair_attempts=self.repair_attempts,
            check=check,
        )
        return answer, [record.as_dict() for record in records]


def build_context(
    config: RunConfig,
    policies: PolicySet | None = None,
    models: Mapping[str, BaseChatModel] | None = None,
    roles: Sequence[str] | None = None,
) -> RecipeContext:
    """Models for `roles` (default: the AIDSAFE graph's). `models` replaces the configured
    chat models (tests pass scripted fakes here)."""
    policies = policies or load_policies(config.policies)
    roles = list(roles) if roles is not None else config.roles()
    model_configs = {role: config.model_for(role) for role in roles}
    if models is None:
        for role, model_config in model_configs.items():
            if model_config.backend == "local" and model_config.model is None:
                # Record which GGUF file ran, not "the default".
                from aidsafe.models.local import bundled_model_path

                model_configs[role] = model_config.model_copy(
                    update={"model": str(bundled_model_path())}
                )
        built: dict[str, BaseChatModel] = {}
        shared: dict[str, BaseChatModel] = {}
        for role, model_config in model_configs.items():
            key = model_config.model_dump_json()
            if key not in shared:
                shared[key] = build_chat_model(model_config)
            built[role] = shared[key]
    else:
        built = {role: models[role] for role in roles}
    return RecipeContext(
        policies=policies,
        policy_block=policies.render(),
        prompts=load_prompts(config.prompts),
        schemas=schemas_for(policies.ids),
        model_configs=model_configs,
        models=built,
        deliberation=config.deliberation,
        belief=config.belief,
        judge=config.judge,
        unsafechain=config.unsafechain,
        recipe=config.recipe,
        repair_attempts=config.repair_attempts,
    )
