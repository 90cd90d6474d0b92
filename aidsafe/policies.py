"""Safety policy sets: the YAML schema, loading with clear errors, hashing and rendering."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aidsafe.errors import UserError, describe_validation_error
from aidsafe.portable import relative_to_cwd

PACKAGED_POLICIES = Path(__file__).parent / "data"
DEFAULT_POLICY_SET = "default"
# The rendered policy text opens every request, so a huge set costs tokens on every call and can
# crowd out the context window; the environment variable raises the limit for who needs it.
MAX_POLICY_BYTES = 64 * 1024
MAX_POLICY_BYTES_ENV = "AIDSAFE_MAX_POLICY_BYTES"


class Policy(BaseModel):
    """One policy: what it covers, what it forbids, and what it explicitly allows."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Short stable identifier that thoughts cite, e.g. `physical_harm`.",
    )
    title: str = Field(min_length=1, description="Human-readable name.")
    description: str = Field(min_length=1, description="What the policy is about.")
    disallowed: list[str] = Field(default_factory=list, description="What must not be done.")
    allowed: list[str] = Field(
        default_factory=list,
        description="What is explicitly fine, so the data teaches help instead of blanket refusal.",
    )
    examples: list[str] = Field(default_factory=list, description="Illustrative cases.")


class PolicySet(BaseModel):
    """A named, versioned set of policies that every agent of a run sees."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str = Field(min_length=1)
    policies: list[Policy] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        # `version: 1.0` in YAML is a float; accept it as the text the user wrote.
        return str(value) if isinstance(value, int | float) else value

    @field_validator("policies")
    @classmethod
    def _unique_ids(cls, policies: list[Policy]) -> list[Policy]:
        seen: dict[str, int] = {}
        for index, policy in enumerate(policies):
            if policy.id in seen:
                raise ValueError(
                    f"duplicate policy id {policy.id!r} at policies[{index}] "
                    f"(first used at policies[{seen[policy.id]}])"
                )
            seen[policy.id] = index
        return policies

    @property
    def ids(self) -> list[str]:
        return [policy.id for policy in self.policies]

    @property
    def sha256(self) -> str:
        """Hash of the content (not the file bytes), so comments and layout do not matter."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def render(self) -> str:
        """The policy block that opens every prompt (static text first, for prefix caching)."""
        lines = [f"# Safety policies: {self.name} (version {self.version})", self.description, ""]
        for policy in self.policies:
            lines.append(f"## [{policy.id}] {policy.title}")
            lines.append(policy.description.strip())
            for heading, items in (
                ("Not allowed", policy.disallowed),
                ("Allowed", policy.allowed),
                ("Examples", policy.examples),
            ):
                if items:
                    lines.append(f"{heading}:")
                    lines.extend(f"- {item.strip()}" for item in items)
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"


def resolve_policy_path(spec: str | Path) -> Path:
    """A path, or the name of a policy set shipped with aidsafe (`default`)."""
    path = Path(spec)
    if path.exists():
        return path
    packaged = PACKAGED_POLICIES / f"{spec}.yaml"
    if isinstance(spec, str) and "/" not in spec and packaged.exists():
        return packaged
    shipped = ", ".join(sorted(p.stem for p in PACKAGED_POLICIES.glob("*.yaml")))
    raise UserError(f"{spec}: policy file not found (shipped policy sets: {shipped})")


def policy_source(spec: str | Path) -> dict[str, str]:
    """Where a policy set came from, for a run's manifest: a shipped set by its name; a file by
    its name and, when it lies below the working directory, its path relative to it (so
    `aidsafe dpo` and `aidsafe grade` find it again from there). Never an absolute path."""
    path = resolve_policy_path(spec)
    if path.resolve().parent == PACKAGED_POLICIES.resolve() and not Path(spec).exists():
        return {"shipped": path.stem}
    source = {"file": path.name}
    relative = relative_to_cwd(path)
    return source | ({"path": relative} if relative is not None else {})


def load_policies(spec: str | Path) -> PolicySet:
    path = resolve_policy_path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read policy file: {error}") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from error
    if data is None:
        raise UserError(f"{path}: the policy file is empty")
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: expected a mapping with name, version, description and policies, "
            f"got {type(data).__name__}"
        )
    try:
        policy_set = PolicySet.model_validate(data)
    except ValidationError as error:
        raise UserError(describe_validation_error(str(path), error)) from error
    size = len(policy_set.render().encode("utf-8"))  # pydantic refused lone surrogates
    limit = max_policy_bytes()
    if size > limit:
        raise UserError(
            f"{path}: the policy set renders to {size:,} bytes, over the limit of {limit:,} bytes: "
            f"the policy text is sent with every request (raise the limit with "
            f"{MAX_POLICY_BYTES_ENV})"
        )
    return policy_set


def max_policy_bytes() -> int:
    """The largest rendered policy set accepted: MAX_POLICY_BYTES, or the environment's."""
    value = os.environ.get(MAX_POLICY_BYTES_ENV, "").strip()
    if not value:
        return MAX_POLICY_BYTES
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise UserError(
            f"{MAX_POLICY_BYTES_ENV}: expected a positive number of bytes, got {value!r}"
        )
    return limit
