"""Everything a recipe graph needs at run time, resolved once from a RunConfig."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel

from aidsafe.config import DeliberationConfig, ModelConfig, RunConfig
from aidsafe.models import build_chat_model
from aidsafe.policies import PolicySet, load_policies
from aidsafe.prompts import RolePrompt, load_prompts
from aidsafe.schemas import RecipeSchemas, schemas_for


@dataclass
class RecipeContext:
    policies: PolicySet
    policy_block: str
    prompts: dict[str, RolePrompt]
    schemas: RecipeSchemas
    model_configs: dict[str, ModelConfig]
    models: dict[str, BaseChatModel]
    deliberation: DeliberationConfig
    repair_attempts: int


def build_context(
    config: RunConfig,
    policies: PolicySet | None = None,
    models: Mapping[str, BaseChatModel] | None = None,
) -> RecipeContext:
    """`models` replaces the configured chat models (tests pass scripted fakes here)."""
    policies = policies or load_policies(config.policies)
    roles = config.roles()
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
        repair_attempts=config.repair_attempts,
    )
