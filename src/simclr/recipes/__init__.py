"""Named recipes: YAML override files read by :func:`simclr.config.recipe_overrides`."""
