"""vlmloom.cli: the `vlmloom` command, a table of sub-commands (main.py); each lives in the package it runs."""
