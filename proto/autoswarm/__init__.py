"""Generated protobuf packages of the autoswarm contract (see proto/autoswarm/v1/*.proto)."""
