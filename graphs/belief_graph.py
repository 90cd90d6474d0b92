"""Entry point for langgraph.json: the belief-augmentation (DPO) graph. Its input is a finished
AIDSAFE row (see aidsafe.belief.belief_input). Models as in aidsafe_graph.py."""

import os
from pathlib import Path

from aidsafe.belief import compile_belief_graph
from aidsafe.config import BELIEF_ROLES, load_config
from aidsafe.context import build_context

_config_file = os.environ.get("AIDSAFE_CONFIG_FILE")
_config = load_config(Path(_config_file) if _config_file else None)
graph = compile_belief_graph(build_context(_config, roles=BELIEF_ROLES))
