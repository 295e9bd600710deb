"""Gate 3, the environment: does this machine have what a real training run needs?

``probe`` gathers the facts (GPU, driver, CUDA, PyTorch, disk, trainer), ``gate3`` judges them and writes
``environment.md``, ``commands`` is the ``loratrain env`` subcommand. Checking before any GPU time is
spent matters because a mismatch otherwise shows up only after a model has been downloaded and loaded.
"""
