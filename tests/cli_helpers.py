"""Helpers for tests that run the ``vlmkit`` command in a subprocess (a module of its own: several conftest.py
files exist, so ``from conftest import ...`` would find whichever was imported first)."""
import sys


def vlmkit_command() -> list[str]:
    return [sys.executable, "-m", "vlmkit"]
