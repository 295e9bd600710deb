"""Renting a cloud GPU: providers, SSH, cost, and the remote run that ends in a teardown."""
