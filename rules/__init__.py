"""The default rule set ships as data files in this folder (no code runs from here)."""
