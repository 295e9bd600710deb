"""The Discord adapter: the only process that holds the Discord token.

It keeps each artist's private thread, turns the engine's replies into messages, buttons and files,
and relays the worker's events into the thread. It translates and decides nothing: every decision,
including who may press a button, is the engine's (``core.engine``).
"""
