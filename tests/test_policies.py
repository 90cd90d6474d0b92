from pathlib import Path

import pytest
import yaml

from aidsafe.errors import UserError
from aidsafe.policies import PolicySet, load_policies

VALID = """\
name: test-set
version: 2
description: Two policies.
policies:
  - id: a
    title: A
    description: First.
    allowed: [x]
  - id: b
    title: B
    description: Second.
    disallowed: [y]
    examples: [z]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_valid_file_loads_with_version_as_text(tmp_path: Path) -> None:
    policies = load_policies(write(tmp_path, VALID))
    assert policies.ids == ["a", "b"]
    assert policies.version == "2"


def test_shipped_default_set_has_the_papers_five_areas() -> None:
    policies = load_policies("default")
    assert len(policies.policies) == 5
    assert all(p.allowed and p.disallowed for p in policies.policies)


def test_hash_ignores_comments_and_layout_but_not_content(tmp_path: Path) -> None:
    first = load_policies(write(tmp_path, VALID)).sha256
    reformatted = "# a comment\n" + VALID.replace("allowed: [x]", "allowed:\n      - x")
    assert load_policies(write(tmp_path, reformatted)).sha256 == first
    assert load_policies(write(tmp_path, VALID.replace("First.", "Changed."))).sha256 != first


def test_render_lists_every_policy_with_allowed_and_disallowed(tmp_path: Path) -> None:
    text = load_policies(write(tmp_path, VALID)).render()
    assert text.index("[a] A") < text.index("[b] B")
    assert "Allowed:\n- x" in text and "Not allowed:\n- y" in text and "Examples:\n- z" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [unclosed", "not valid YAML at line 1"),
        ("", "the policy file is empty"),
        ("- just\n- a list\n", "expected a mapping"),
        (VALID.replace("    title: B\n", ""), "policies[1].title: Field required"),
        (VALID.replace("id: b", "id: a"), "duplicate policy id 'a' at policies[1]"),
        (VALID + "extra: 1\n", "extra: unknown key"),
        (VALID.replace("id: b", "id: 'has space'"), "policies[1].id"),
        ("name: x\nversion: 1\ndescription: d\npolicies: []\n", "policies: List should have"),
    ],
)
def test_bad_policy_files_name_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as caught:
        load_policies(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_missing_file_lists_shipped_sets(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"not found .*shipped policy sets: default"):
        load_policies(tmp_path / "missing.yaml")


def test_a_policy_set_over_the_size_limit_is_refused_with_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIDSAFE_MAX_POLICY_BYTES", raising=False)
    big = VALID.replace("examples: [z]", "examples: [" + ", ".join(["z" * 1000] * 70) + "]")
    path = write(tmp_path, big)
    with pytest.raises(UserError) as caught:
        load_policies(path)
    message = str(caught.value)
    size = len(PolicySet.model_validate(yaml.safe_load(big)).render().encode())
    assert message.startswith(f"{path}: the policy set renders to {size:,} bytes")
    assert "over the limit of 65,536 bytes" in message and "sent with every request" in message
    assert "AIDSAFE_MAX_POLICY_BYTES" in message
    monkeypatch.setenv("AIDSAFE_MAX_POLICY_BYTES", "100000")
    assert load_policies(path).ids == ["a", "b"]
    monkeypatch.setenv("AIDSAFE_MAX_POLICY_BYTES", "100")
    with pytest.raises(UserError, match="over the limit of 100 bytes:"):
        load_policies(write(tmp_path, VALID))
    monkeypatch.setenv("AIDSAFE_MAX_POLICY_BYTES", "64k")
    with pytest.raises(UserError, match="AIDSAFE_MAX_POLICY_BYTES: expected a positive number"):
        load_policies(write(tmp_path, VALID))
