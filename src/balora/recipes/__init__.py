"""Recipes: a task's data and backbone wired to the methods and the comparison runner."""
