"""The arq worker: runs ``core.jobs`` on Redis queues and publishes their events to a Redis stream.

It translates and decides nothing: the job functions are the ones embedded mode runs in-process.
Quick jobs (checks, reports) and GPU jobs (dry run, training, grids) use separate queues, so a GPU
worker takes one job at a time and a long training timeout never delays a quick job's recovery.
A worker never talks to Discord and never holds its token.
"""
