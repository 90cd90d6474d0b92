"""Entry points for langgraph.json (`langgraph dev`, LangGraph Studio): one graph factory per
registered recipe, named after it, on the models of the config file named by $AIDSAFE_CONFIG_FILE
(unset: the defaults, i.e. the embedded model). Studio brings its own checkpointer; the run
context (models, prompts, policies) is bound to the graph, since Studio cannot send one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aidsafe.recipes import registry


def load_studio_config() -> Any:
    config_file = os.environ.get("AIDSAFE_CONFIG_FILE")
    return registry.load_config(Path(config_file) if config_file else None)


def factory(name: str) -> Callable[[], Any]:
    def make_graph() -> Any:
        return registry.studio_graph(name, load_studio_config())

    make_graph.__name__ = make_graph.__qualname__ = name
    make_graph.__doc__ = f"The {name} recipe's graph."
    return make_graph


for _name in registry.graph_names():
    globals()[_name] = factory(_name)
