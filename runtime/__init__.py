"""helix.runtime: the sharded serving runtime (engine, KV cache, ZeroMQ pipeline)."""
