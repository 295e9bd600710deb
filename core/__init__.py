"""loratrain's engine, capabilities and records: everything that is neither Discord nor arq."""
