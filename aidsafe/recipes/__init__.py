"""Recipes: one module per recipe, the Recipe protocol (`base`) and the registry, the only module
that names them."""
