"""lf: run local LLM runtimes as supervised daemons, check their health, chat with them."""

__version__ = "0.1.0"
