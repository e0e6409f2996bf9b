"""Layer-drop pruner: removes whole decoder layers chosen by an estimator or listed in the recipe."""
