"""Bringing a model in and running it through the workbench: any source loaded whole or layer by layer."""
