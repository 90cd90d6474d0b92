"""Entry point for langgraph.json (`langgraph dev`, LangGraph Studio): the AIDSAFE graph on the
models of the config file named by $AIDSAFE_CONFIG_FILE, or on the embedded model if unset.
Studio supplies its own checkpointer, so the graph is compiled without one."""

import os
from pathlib import Path

from aidsafe.config import load_config
from aidsafe.context import build_context
from aidsafe.graph import compile_graph

_config_file = os.environ.get("AIDSAFE_CONFIG_FILE")
graph = compile_graph(build_context(load_config(Path(_config_file) if _config_file else None)))
