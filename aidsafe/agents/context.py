"""Everything a graph node needs at run time, resolved once from a RunConfig: the models and
prompts of the roles a recipe calls, the policy set and its schemas. Nodes receive it as
LangGraph's runtime context (`runtime.context`), so each node is a plain module-level function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel

from aidsafe.config import ModelConfig, RunConfig
from aidsafe.models import build_chat_model
from aidsafe.models.structured import call_structured
from aidsafe.policies import PolicySet, load_policies
from aidsafe.prompts import RolePrompt, load_prompts, render_messages
from aidsafe.schemas import RecipeSchemas, schemas_for

T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True)
class Role:
    """A model role: its config key (`models.<name>`, `prompts.<name>`), its default sampling
    temperature and its default prompt. `prompt` None: the role renders no template of ours
    (the target model gets the user's prompt as is; the grader builds one prompt per rubric),
    so it takes no prompt override. `numbered`: called as `<name>_1` .. `<name>_N`, each
    configurable alone or through `<name>`."""

    name: str
    temperature: float
    prompt: RolePrompt | None = None
    description: str = ""
    numbered: bool = False

    def called(self, count: int = 1) -> list[str]:
        """The role names a run calls (numbered roles: one per agent)."""
        if not self.numbered:
            return [self.name]
        return [f"{self.name}_{n}" for n in range(1, count + 1)]


@dataclass
class RunContext:
    """The resolved models, prompts and settings of one run's roles."""

    config: RunConfig
    policies: PolicySet
    roles: dict[str, Role]  # called role name -> its declaration
    model_configs: dict[str, ModelConfig]
    models: dict[str, BaseChatModel]
    prompts: dict[str, RolePrompt]  # by role family
    policy_block: str
    schemas: RecipeSchemas
    # role -> its fallback model and config, for the roles whose model names one
    fallbacks: dict[str, tuple[BaseChatModel, ModelConfig]] = field(default_factory=dict)

    @property
    def repair_attempts(self) -> int:
        return self.config.repair_attempts

    async def ask(
        self,
        role: str,
        stage: str,
        schema: type[T],
        check: Callable[[T], list[str]] | None = None,
        **values: Any,
    ) -> tuple[T, list[dict[str, Any]]]:
        """One structured call of `role`: render its prompt, call, validate, repair."""
        messages = render_messages(self.policy_block, self.prompts[self.roles[role].name], **values)
        return await self.ask_messages(role, stage, schema, messages, check)

    async def ask_messages(
        self,
        role: str,
        stage: str,
        schema: type[T],
        messages: list[Any],
        check: Callable[[T], list[str]] | None = None,
    ) -> tuple[T, list[dict[str, Any]]]:
        answer, records = await call_structured(
            self.models[role],
            self.model_configs[role],
            messages,
            schema,
            role=role,
            stage=stage,
            repair_attempts=self.repair_attempts,
            check=check,
            fallback=self.fallbacks.get(role),
        )
        return answer, [record.as_dict() for record in records]

    async def aclose(self) -> None:
        """Close what the models hold open (HTTP connection pools)."""
        for model in {id(m): m for m in self.models.values()}.values():
            close = getattr(model, "aclose", None)
            if close is not None:
                await close()

    def endpoint_load(self) -> str:
        """Requests in flight per endpoint whose concurrency adapted to overload, for the
        progress line ("" while none has)."""
        gates = {}
        for model in self.models.values():
            pool = getattr(model, "pool", None)
            gate = getattr(pool, "gate", None)
            if gate is not None and gate.limit is not None:
                gates[id(gate)] = (urlsplit(str(getattr(model, "base_url", ""))).netloc, gate)
        return "  ".join(f"{host} {gate.describe()}" for host, gate in gates.values())

    def provenance(self) -> dict[str, Any]:
        """What a row records about the models of the roles that made it."""
        return {role: cfg.provenance() for role, cfg in self.model_configs.items()}

    def policy_provenance(self) -> dict[str, Any]:
        return {
            "name": self.policies.name,
            "version": self.policies.version,
            "sha256": self.policies.sha256,
        }


def resolve_models(config: RunConfig, roles: dict[str, Role]) -> dict[str, ModelConfig]:
    """Each called role's model config (a local model without a path names the bundled GGUF,
    so provenance records which file ran, by its package-relative name and hash)."""
    configs = {name: config.model_for(name, role.temperature) for name, role in roles.items()}
    for name, model_config in configs.items():
        if model_config.backend == "local" and model_config.model is None:
            from aidsafe.models.local import bundled_model_path

            configs[name] = model_config.model_copy(update={"model": str(bundled_model_path())})
        configs[name].identity()  # hash a model file now, once, not inside a row's first call
    return configs


def build_context(
    config: RunConfig,
    roles: dict[str, Role],
    policies: PolicySet | None = None,
    *,
    build_models: bool = True,
) -> RunContext:
    """The context of a run calling `roles` (called name -> declaration). `build_models`
    False: no model is built (drawing a graph)."""
    policies = policies or load_policies(config.policies)
    model_configs = resolve_models(config, roles) if build_models else {}
    built: dict[str, BaseChatModel] = {}
    shared: dict[str, BaseChatModel] = {}
    pools: dict[Any, Any] = {}  # one HTTP pool per endpoint, rate limits per model there
    fallbacks: dict[str, tuple[BaseChatModel, ModelConfig]] = {}

    def build(model_config: ModelConfig) -> BaseChatModel:
        key = model_config.model_dump_json()  # roles with one model share one client/engine
        if key not in shared:
            shared[key] = build_chat_model(model_config, pools)
        return shared[key]

    for role, model_config in model_configs.items():
        built[role] = build(model_config)
        fallback = model_config.fallback_config()
        if fallback is not None:
            fallbacks[role] = (build(fallback), fallback)
    defaults = {role.name: role.prompt for role in roles.values() if role.prompt}
    return RunContext(
        config=config,
        policies=policies,
        roles=dict(roles),
        model_configs=model_configs,
        models=built,
        prompts=load_prompts(defaults, config.prompts),
        policy_block=policies.render(),
        schemas=schemas_for(policies.ids),
        fallbacks=fallbacks,
    )


def called_roles(declared: Sequence[Role], numbered_count: int = 1) -> dict[str, Role]:
    """Called role name -> declaration, for a list of role declarations."""
    return {name: role for role in declared for name in role.called(numbered_count)}
