"""The methods a study compares, each a recipe: a chain of phases plus its parameters (:mod:`.base`, :mod:`.registry`)."""
