"""The gRPC service: translation between protobuf and the store/policy types."""
