"""Recipes that build the models this project ships. They use the library in model/ but are not the method:
nothing in model/ outside recipes/ imports them.
"""
