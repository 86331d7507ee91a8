"""The development stack: bring livekit-server, Redis and PostgreSQL up and down (Docker Compose when an
engine answers, native processes otherwise), tell their health, and derive each node's server config.

Nothing here imports `bootstrap`: the bootstrap verifies what this package runs."""
