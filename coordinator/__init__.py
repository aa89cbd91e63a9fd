"""The coordinator: gRPC service, state store, policy, global branch. Never imports torch."""
