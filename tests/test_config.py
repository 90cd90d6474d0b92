from pathlib import Path

import pytest

from aidsafe.config import fingerprint, load_config
from aidsafe.errors import UserError


def test_defaults_follow_recipes_md() -> None:
    config = load_config(None)
    assert config.deliberation.agents == 2 and config.deliberation.budget == 4
    assert config.roles() == ["decomposer", "drafter", "deliberator_1", "deliberator_2", "refiner"]
    assert config.model_for("drafter").temperature == 0.7
    assert config.model_for("deliberator_2").temperature == 0.7
    assert config.model_for("refiner").temperature == 0.0
    assert config.model_for("refiner").backend == "local"


def test_role_layers_inherit_from_default_then_family(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n"
        "  default: {backend: openai, base_url: 'http://h/v1', model: m, temperature: 0.5}\n"
        "  deliberator: {model: d}\n"
        "  deliberator_2: {model: d2, temperature: 0}\n"
    )
    config = load_config(path)
    assert config.model_for("decomposer").model == "m"
    assert config.model_for("refiner").temperature == 0.5  # the default layer beats role defaults
    assert config.model_for("deliberator_1").model == "d"
    second = config.model_for("deliberator_2")
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


def test_zero_and_false_are_values_not_unset() -> None:
    config = load_config(
        None, {"deliberation": {"budget": 0}, "models": {"refiner": {"temperature": 0}}}
    )
    assert config.deliberation.budget == 0
    assert config.roles() == ["decomposer", "drafter", "refiner"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concurrncy: 3\n", "c.yaml: concurrncy: unknown key"),
        ("models:\n  refiner: {tempreature: 0}\n", "models.refiner.tempreature: unknown key"),
        ("models:\n  critic: {}\n", "unknown role 'critic'"),
        ("deliberation: {agents: 0}\n", "deliberation.agents"),
        ("models:\n  default: {api_key: sk-123}\n", "models.default.api_key: unknown key"),
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


def test_fingerprint_ignores_concurrency_and_retries_but_not_sampling() -> None:
    base = fingerprint(load_config(None).fingerprint_data())
    assert fingerprint(load_config(None, {"concurrency": 64}).fingerprint_data()) == base
    retries = {"models": {"default": {"max_retries": 9, "timeout": 5}}}
    assert fingerprint(load_config(None, retries).fingerprint_data()) == base
    hotter = {"models": {"refiner": {"temperature": 0.3}}}
    assert fingerprint(load_config(None, hotter).fingerprint_data()) != base


def test_provenance_never_holds_the_api_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(None, {"models": {"default": {"api_key_env": "MY_SECRET_KEY"}}})
    assert "MY_SECRET_KEY" not in str(config.fingerprint_data())


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in (Path(__file__).parent.parent / "examples").glob("*.yaml")
        if "polic" not in p.name
    ),
    ids=lambda p: p.name,
)
def test_every_example_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.roles() and all(config.model_for(role) for role in config.roles())
