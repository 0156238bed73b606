"""Risk rules checked before routing: the file's schema (`schema`), the pure decisions
(`rules`), the hot-reloaded file (`loader`), the Redis counters (`counters`) and the check the
payment service calls (`engine.RiskEngine`)."""
